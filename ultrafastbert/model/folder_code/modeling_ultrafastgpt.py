# Generated from ultrafastbert/model/ultrafastgpt/modeling.py by `make folder-code`: edit the package, not this copy.
"""UltraFastGPT: a GPT-style causal decoder whose feedforward is dense, narrow dense, an FFF, or absent.

One file holds the family (configuration, then the modules in the order data flows: embeddings -> attention ->
feedforward -> layer -> decoder -> language-model head), so that a saved folder carries it as one file
(``modeling_ultrafastgpt.py``, made by ``codegen.py``). The architecture is GPT-2's with the choices of this
package: pre-LayerNorm layers, learned absolute positions (``embed_positions``, as GPT-2; a context of
``max_position_embeddings`` tokens), causal self-attention through ``scaled_dot_product_attention`` with one fused
QKV projection and no biases, a final LayerNorm and an ``lm_head`` tied to the token embedding. Generation is
``transformers``' own (``GenerationMixin``), with its KV-cache classes (``DynamicCache`` by default): greedy,
sampling, top-k/top-p, beam search and ``pipeline("text-generation")`` work.

Shapes: ``B`` batch, ``S`` new tokens, ``P`` tokens already in the cache, ``T = P + S``, ``H`` hidden, ``V``
vocabulary, ``d`` head size.

No ``from __future__ import annotations`` here: ``@strict`` checks each config field against its annotation.
"""

import re
from typing import Any, Literal, Self

import torch
import torch.nn.functional as F
from huggingface_hub.dataclasses import strict
from torch import Tensor, nn
from transformers import GenerationMixin, PretrainedConfig, PreTrainedModel
from transformers.cache_utils import Cache, DynamicCache
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast

try:  # the installed ultrafastbert package, whose FFF layer has the compiled kernel
    from ultrafastbert.fff import FFF, check_balance_rate, check_impl, neurons_per_token
except ImportError:  # not installed: this folder's pure-PyTorch copy
    from .fff_layer import FFF, check_balance_rate, check_impl
    from .fff_reference import neurons_per_token
try:  # the installed ultrafastbert package, whose FFF layer has the compiled kernel
    from ultrafastbert.fff.layer import MAX_DEPTH
except ImportError:  # not installed: this folder's pure-PyTorch copy
    from .fff_layer import MAX_DEPTH
from .model_base import FFFPreTrainedMixin

DECODER_MODEL_TYPE = "ultrafastgpt"
DECODER_FILE = "modeling_ultrafastgpt"  # the folder file holding this module's copy (config and models alike)
DECODER_AUTO_MAP = {
    "AutoConfig": f"{DECODER_FILE}.UltraFastGPTConfig",
    "AutoModel": f"{DECODER_FILE}.UltraFastGPTModel",
    "AutoModelForCausalLM": f"{DECODER_FILE}.UltraFastGPTForCausalLM",
}
# Parameters of the language-model head: a bare decoder's checkpoint loads into the causal LM (a fresh head tied
# to the embedding), and the causal LM's into the bare decoder.
DECODER_HEAD_PREFIXES = ("lm_head.",)

# Model presets: a size, then optionally its feedforward.
#   tiny-gpt             4 layers x 128, 4 heads, context 256, vocabulary 8192 (the corpus tokenizer's default)
#   gpt2-small           12 layers x 768, 12 heads, context 1024, vocabulary 50257 (GPT-2's shape)
# and after the size: nothing or -dense (dense GELU 4H wide: 512 / 3072), -dense-W (width W), -fff (the size's tree:
# 1x8 / 1x11), -fff-KxD (K trees of depth D), -narrow (dense as wide as the size's tree's path: 9 / 12 neurons),
# -no-ff (attention-only layers). E.g. gpt2-small-fff-1x11, tiny-gpt-narrow. Dropout is off in every preset.
DECODER_PRESET_NAMES = ("tiny-gpt[-FF]", "gpt2-small[-FF]")
DECODER_PRESET_FEEDFORWARDS = ("dense", "dense-W", "fff", "fff-KxD", "narrow", "no-ff")
_DECODER_SIZES: dict[str, dict[str, Any]] = {
    "tiny-gpt": {
        "hidden_size": 128,
        "num_hidden_layers": 4,
        "num_attention_heads": 4,
        "max_position_embeddings": 256,
        "vocab_size": 8192,
        "intermediate_size": 512,
        "fff_trees": 1,
        "fff_depth": 8,
    },
    "gpt2-small": {
        "hidden_size": 768,
        "num_hidden_layers": 12,
        "num_attention_heads": 12,
        "max_position_embeddings": 1024,
        "vocab_size": 50257,
        "intermediate_size": 3072,
        "fff_trees": 1,
        "fff_depth": 11,
    },
}
_NO_DROPOUT = {"embedding_dropout_prob": 0.0, "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}


def decoder_preset_fields(name: str) -> dict[str, Any]:
    """The config fields preset ``name`` sets (see ``DECODER_PRESET_NAMES``); ``ValueError`` for an unknown name."""
    pattern = r"(tiny-gpt|gpt2-small)(?:-(dense|fff|narrow|no-ff)(?:-(\d+)(?:x(\d+))?)?)?"
    match = re.fullmatch(pattern, name)
    feedforward, first, second = (match[2] or "dense", match[3], match[4]) if match else (None, None, None)
    valid = match and (
        (feedforward == "dense" and second is None)
        or (feedforward == "fff" and (first is None) == (second is None))
        or (feedforward in ("narrow", "no-ff") and first is None)
    )
    if not valid:
        raise ValueError(
            f"unknown decoder preset {name!r}; known: {', '.join(DECODER_PRESET_NAMES)} with FF one of "
            f"{', '.join(DECODER_PRESET_FEEDFORWARDS)} (e.g. gpt2-small-fff-1x11)"
        )
    fields = {**_DECODER_SIZES[match[1]], **_NO_DROPOUT}
    if feedforward == "dense":
        fields["ffn_type"] = "dense"
        if first is not None:
            fields["intermediate_size"] = int(first)
    elif feedforward == "fff":
        fields["ffn_type"] = "fff"
        if first is not None:
            fields["fff_trees"], fields["fff_depth"] = int(first), int(second)
    elif feedforward == "narrow":
        fields["ffn_type"] = "dense"
        fields["intermediate_size"] = neurons_per_token(fields["fff_depth"], fields["fff_trees"])
    else:
        fields["ffn_type"] = "none"
    return fields


@strict
class UltraFastGPTConfig(PretrainedConfig):
    """Architecture of an UltraFastGPT causal decoder; defaults are ``gpt2-small-fff`` (12 x 768, FFF 1x11).

    ``ffn_type`` picks each layer's feedforward: ``"dense"`` (``intermediate_size`` wide, GELU; a narrow layer is
    a small width), ``"fff"`` (``fff_trees`` trees of depth ``fff_depth``, run by ``fff_impl``: ``"auto"`` takes
    the compiled kernel in inference and the sparse training paths with grad; ``"reference"`` is the dense
    masking oracle) or ``"none"`` (attention-only layers: the ceiling a feedforward's cost is measured against).
    ``fff_balance_rate`` / ``fff_balance_loss`` keep the trees balanced as in the encoder family.
    ``from_preset(name, **overrides)`` names the sizes used in practice (``DECODER_PRESET_NAMES``).
    """

    model_type = DECODER_MODEL_TYPE

    vocab_size: int = 50257
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    max_position_embeddings: int = 1024
    ffn_type: Literal["fff", "dense", "none"] = "fff"
    intermediate_size: int = 3072
    fff_trees: int = 1
    fff_depth: int = 11
    fff_impl: str = "auto"
    fff_balance_rate: float | int = 0.0
    fff_balance_loss: float | int = 0.0
    layer_norm_eps: float = 1e-5
    embedding_dropout_prob: float | int = 0.0
    hidden_dropout_prob: float | int = 0.0
    attention_probs_dropout_prob: float | int = 0.0
    initializer_range: float = 0.02
    use_cache: bool = True
    pad_token_id: int | None = 0
    bos_token_id: int | None = None
    eos_token_id: int | list[int] | None = None
    tie_word_embeddings: bool = True

    def __post_init__(self, **kwargs: Any) -> None:
        self.auto_map = dict(DECODER_AUTO_MAP)
        super().__post_init__(**kwargs)
        self._check_sizes()

    def _check_sizes(self) -> None:
        """Refuse sizes the modules cannot be built from, one line naming the field."""
        if min(self.vocab_size, self.hidden_size, self.num_attention_heads, self.max_position_embeddings) < 1:
            raise ValueError("vocab_size, hidden_size, num_attention_heads and max_position_embeddings must be >= 1")
        if self.num_hidden_layers < 0:
            raise ValueError(f"num_hidden_layers must be >= 0, got {self.num_hidden_layers}")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"hidden_size ({self.hidden_size}) must be divisible by num_attention_heads "
                f"({self.num_attention_heads})"
            )
        if self.ffn_type == "dense" and self.intermediate_size < 1:
            raise ValueError(f"intermediate_size must be >= 1 for a dense feedforward, got {self.intermediate_size}")
        if self.ffn_type == "fff" and (self.fff_trees < 1 or not 0 <= self.fff_depth <= MAX_DEPTH):
            raise ValueError(
                f"need fff_trees >= 1 and 0 <= fff_depth <= {MAX_DEPTH}, got {self.fff_trees}, {self.fff_depth}"
            )
        check_impl(self.fff_impl, name="fff_impl")
        check_balance_rate(self.fff_balance_rate, name="fff_balance_rate")
        check_balance_rate(self.fff_balance_loss, name="fff_balance_loss")

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> Self:
        """The config of preset ``name`` (e.g. ``"gpt2-small-fff-1x11"``, ``"tiny-gpt-narrow"``); ``overrides``
        replace any field, typically ``vocab_size`` (the tokenizer's) and the special token ids."""
        return cls(**{**decoder_preset_fields(name), **overrides})

    @property
    def name(self) -> str:
        """E.g. ``UltraFastGPT-1x11``, ``GPT-dense-3072`` or ``GPT-noFF``."""
        if self.ffn_type == "fff":
            return f"UltraFastGPT-{self.fff_trees}x{self.fff_depth}"
        if self.ffn_type == "none":
            return "GPT-noFF"
        return f"GPT-dense-{self.intermediate_size}"

    @property
    def ff_neurons_per_token(self) -> int:
        """Feedforward neurons each token evaluates per layer: ``K*(D+1)`` for an FFF, the width for a dense FF."""
        if self.ffn_type == "fff":
            return neurons_per_token(self.fff_depth, self.fff_trees)
        return 0 if self.ffn_type == "none" else self.intermediate_size


class UltraFastGPTEmbeddings(nn.Module):
    """Token embedding ``embed_tokens`` ``(V, H)`` plus learned positions ``embed_positions`` ``(context, H)``, then
    dropout."""

    def __init__(self, config: UltraFastGPTConfig) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.embed_positions = nn.Embedding(config.max_position_embeddings, config.hidden_size)
        self.dropout = nn.Dropout(config.embedding_dropout_prob)

    def forward(self, input_ids: Tensor, position_ids: Tensor) -> Tensor:
        """``input_ids`` ``(B, S)``, ``position_ids`` ``(B or 1, S)`` -> ``(B, S, H)``."""
        return self.dropout(self.embed_tokens(input_ids) + self.embed_positions(position_ids))


class UltraFastGPTAttention(nn.Module):
    """Causal multi-head self-attention: one fused projection ``query_key_value`` ``(3H, H)`` whose output splits
    into q, k, v (each ``H`` wide, heads contiguous), the cache's keys and values before the new ones, and the output
    projection ``dense`` ``(H, H)``; no biases."""

    def __init__(self, config: UltraFastGPTConfig, layer_idx: int) -> None:
        super().__init__()
        self.layer_idx = layer_idx
        self.num_heads = config.num_attention_heads
        self.head_dim = config.hidden_size // config.num_attention_heads
        self.query_key_value = nn.Linear(config.hidden_size, 3 * config.hidden_size, bias=False)
        self.dense = nn.Linear(config.hidden_size, config.hidden_size, bias=False)
        self.dropout_prob = config.attention_probs_dropout_prob

    def forward(
        self, hidden_states: Tensor, attention_mask: Tensor | None, is_causal: bool, past_key_values: Cache | None
    ) -> Tensor:
        """``hidden_states`` ``(B, S, H)``; ``attention_mask`` boolean ``(B, 1, S, T)`` (True: attend) or None, with
        ``is_causal`` telling whether the plain causal pattern applies -> ``(B, S, H)``."""
        batch, seq_len, hidden = hidden_states.shape
        qkv = self.query_key_value(hidden_states).view(batch, seq_len, 3, self.num_heads, self.head_dim)
        query, key, value = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # 3 x (B, heads, S, d)
        if past_key_values is not None:
            key, value = past_key_values.update(key, value, self.layer_idx)  # 2 x (B, heads, T, d)
        context = F.scaled_dot_product_attention(
            query,
            key,
            value,
            attn_mask=attention_mask,
            dropout_p=self.dropout_prob if self.training else 0.0,
            is_causal=is_causal,
        )  # (B, heads, S, d)
        return self.dense(context.transpose(1, 2).reshape(batch, seq_len, hidden))


class UltraFastGPTFeedForward(nn.Module):
    """Dense feedforward: ``dense_in`` (H -> I), GELU, ``dense_out`` (I -> H), no biases. A narrow layer is the same
    module with a small ``I``."""

    def __init__(self, config: UltraFastGPTConfig) -> None:
        super().__init__()
        self.dense_in = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.dense_out = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)

    def forward(self, hidden_states: Tensor) -> Tensor:
        return self.dense_out(F.gelu(self.dense_in(hidden_states)))


class UltraFastGPTLayer(GradientCheckpointingLayer):
    """Pre-LayerNorm decoder layer: ``x + drop(attn(norm1(x)))``, then ``x + drop(ffn(norm2(x)))`` (left out when
    ``ffn_type="none"``)."""

    def __init__(self, config: UltraFastGPTConfig, layer_idx: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.attn = UltraFastGPTAttention(config, layer_idx)
        self.ffn: nn.Module | None = None
        if config.ffn_type != "none":
            self.norm2 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        if config.ffn_type == "fff":
            self.ffn = FFF(
                config.hidden_size,
                config.fff_depth,
                trees=config.fff_trees,
                impl=config.fff_impl,
                init_std=config.initializer_range,
                balance_rate=config.fff_balance_rate,
                balance_loss=config.fff_balance_loss,
            )
        elif config.ffn_type == "dense":
            self.ffn = UltraFastGPTFeedForward(config)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(
        self,
        hidden_states: Tensor,
        attention_mask: Tensor | None,
        is_causal: bool,
        past_key_values: Cache | None = None,
    ) -> Tensor:
        """``(B, S, H)`` -> ``(B, S, H)``. ``past_key_values`` by keyword: gradient checkpointing drops it (with a
        warning) in training, where no cache is wanted."""
        attended = self.attn(self.norm1(hidden_states), attention_mask, is_causal, past_key_values)
        hidden_states = hidden_states + self.dropout(attended)
        if self.ffn is not None:
            hidden_states = hidden_states + self.dropout(self.ffn(self.norm2(hidden_states)))
        return hidden_states


class UltraFastGPTPreTrainedModel(FFFPreTrainedMixin, PreTrainedModel):
    """Shared ``transformers`` plumbing: config class and weight init; FFF path selection, strict loading (the
    ``lm_head`` may be absent or extra) and saving with the code from ``FFFPreTrainedMixin``."""

    config_class = UltraFastGPTConfig
    config: UltraFastGPTConfig
    base_model_prefix = "model"
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _no_split_modules = ["UltraFastGPTLayer"]
    _skip_keys_device_placement = ["past_key_values"]
    folder_files = {__name__: DECODER_FILE}

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        """``N(0, initializer_range)`` linear/embedding weights (FFF included), zero biases, unit LayerNorms; zero
        routing offsets."""
        super()._init_weights(module)
        if isinstance(module, FFF) and module.routing_offset is not None:
            module.routing_offset.zero_()

    @classmethod
    def is_head_key(cls, key: str) -> bool:
        return key.startswith(DECODER_HEAD_PREFIXES)


class UltraFastGPTModel(UltraFastGPTPreTrainedModel):
    """The bare decoder (``AutoModel``): embeddings, the layers, a final LayerNorm."""

    def __init__(self, config: UltraFastGPTConfig) -> None:
        super().__init__(config)
        self.embeddings = UltraFastGPTEmbeddings(config)
        self.layers = nn.ModuleList(UltraFastGPTLayer(config, index) for index in range(config.num_hidden_layers))
        self.final_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.gradient_checkpointing = False
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embeddings.embed_tokens

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.embeddings.embed_tokens = value

    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        position_ids: Tensor | None = None,
        past_key_values: Cache | None = None,
        use_cache: bool | None = None,
        output_hidden_states: bool | None = None,
        output_attentions: bool | None = None,
        return_dict: bool | None = None,
    ) -> BaseModelOutputWithPast | tuple:
        """``input_ids`` ``(B, S)``: the new tokens; ``attention_mask`` ``(B, T)`` over the cached and the new tokens
        (1: a token, 0: padding; default: all tokens); ``position_ids`` ``(B, S)`` (default ``P .. T-1``; generation
        passes them counted over the unpadded tokens); ``past_key_values`` a ``Cache`` (``use_cache``, by default
        ``config.use_cache`` in eval mode and False in training, makes a ``DynamicCache`` when none is given)
        -> ``last_hidden_state`` ``(B, S, H)`` and the cache."""
        config = self.config
        if output_attentions:
            raise ValueError("output_attentions is not supported: the attention runs fused, without probabilities")
        if use_cache is None:  # a cache serves generation: training forwards make none unless asked
            use_cache = config.use_cache and not self.training
        output_hidden_states = config.output_hidden_states if output_hidden_states is None else output_hidden_states
        return_dict = config.return_dict if return_dict is None else return_dict
        if self.gradient_checkpointing and self.training:
            use_cache = False  # a cache is for generation; checkpointed layers are recomputed without one
        if use_cache and past_key_values is None:
            past_key_values = DynamicCache(config=config)
        past = int(past_key_values.get_seq_length()) if past_key_values is not None else 0
        self._check_input_ids(input_ids, past)
        batch, seq_len = input_ids.shape
        # Keys the attention will see: the cached and new tokens, or a static cache's whole preallocated length
        # (its unwritten tail lies past every query's band and is masked).
        keys = past + seq_len if past_key_values is None else past_key_values.get_mask_sizes(seq_len, 0)[0]
        if position_ids is None:
            position_ids = torch.arange(past, past + seq_len, device=input_ids.device).unsqueeze(0)  # (1, S)
        else:
            self._check_position_ids(position_ids, input_ids.shape)
        attention_mask, is_causal = self._attention_mask(attention_mask, batch, seq_len, past, keys, input_ids.device)
        hidden_states = self.embeddings(input_ids, position_ids)  # (B, S, H)
        all_hidden_states = [hidden_states] if output_hidden_states else None
        for layer in self.layers:
            hidden_states = layer(hidden_states, attention_mask, is_causal, past_key_values=past_key_values)
            if all_hidden_states is not None:
                all_hidden_states.append(hidden_states)
        hidden_states = self.final_norm(hidden_states)
        if all_hidden_states is not None:
            all_hidden_states[-1] = hidden_states
        output = BaseModelOutputWithPast(
            last_hidden_state=hidden_states,
            past_key_values=past_key_values if use_cache else None,
            hidden_states=tuple(all_hidden_states) if all_hidden_states is not None else None,
        )
        return output if return_dict else output.to_tuple()

    def _check_input_ids(self, input_ids: Tensor, past: int) -> None:
        """One line for each mistake: not a ``(B, S)`` integer tensor, empty, past the context, ids out of range."""
        if not isinstance(input_ids, Tensor) or input_ids.dim() != 2:
            shape = tuple(input_ids.shape) if isinstance(input_ids, Tensor) else type(input_ids).__name__
            raise ValueError(f"input_ids must be a (batch, sequence) tensor, got {shape}")
        if input_ids.dtype not in (torch.int64, torch.int32):
            raise TypeError(f"input_ids must be an int64 or int32 tensor, got {input_ids.dtype} (use ids.long())")
        if input_ids.numel() == 0:
            raise ValueError(f"input_ids is empty (shape {tuple(input_ids.shape)}): give at least one token")
        context = self.config.max_position_embeddings
        if past + input_ids.shape[1] > context:
            cached = f" after {past} cached tokens" if past else ""
            raise ValueError(
                f"{input_ids.shape[1]} tokens{cached} exceed the model's context of {context} tokens "
                "(max_position_embeddings); shorten the prompt"
            )
        if not torch.compiler.is_compiling():
            low, high = int(input_ids.min()), int(input_ids.max())
            vocab = self.config.vocab_size
            if low < 0 or high >= vocab:
                raise ValueError(
                    f"input_ids must lie in [0, {vocab}) (the model's vocab_size), got ids from {low} to {high}; "
                    "is the tokenizer the model's own?"
                )

    def _check_position_ids(self, position_ids: Tensor, shape: torch.Size) -> None:
        if position_ids.dim() != 2 or position_ids.shape[1] != shape[1] or position_ids.shape[0] not in (1, shape[0]):
            raise ValueError(f"position_ids must have shape {tuple(shape)}, got {tuple(position_ids.shape)}")
        if not torch.compiler.is_compiling():
            context = self.config.max_position_embeddings
            if int(position_ids.min()) < 0 or int(position_ids.max()) >= context:
                raise ValueError(
                    f"position_ids must lie in [0, {context}) (the context), got {int(position_ids.min())} to "
                    f"{int(position_ids.max())}"
                )

    @staticmethod
    def _attention_mask(
        attention_mask: Tensor | None, batch: int, seq_len: int, past: int, keys: int, device: torch.device
    ) -> tuple[Tensor | None, bool]:
        """The mask for ``scaled_dot_product_attention`` over ``keys`` keys and whether ``is_causal`` serves instead.

        A 2-D ``attention_mask`` ``(B, past + S)`` (1: a token, 0: padding) becomes a boolean ``(B, 1, S, keys)``
        mask (True: attend): the causal band and the key mask, and each token always sees itself, so that a padded
        row stays finite (its output is never read). Without padding: no mask for one new token that sees every key
        (it sees everything cached), ``is_causal`` for a prompt without cache, the band otherwise. A 4-D mask
        (``generate`` makes one for a static cache) is used as it is."""
        total = past + seq_len
        if attention_mask is not None and attention_mask.dim() == 4:
            if attention_mask.shape[-2:] != (seq_len, keys) or attention_mask.shape[0] not in (1, batch):
                raise ValueError(
                    f"a 4-D attention_mask must have shape ({batch}, 1, {seq_len}, {keys}), "
                    f"got {tuple(attention_mask.shape)}"
                )
            return attention_mask, False
        if attention_mask is not None:
            if attention_mask.shape != (batch, total):
                raise ValueError(
                    f"attention_mask must have shape {(batch, total)} (cached and new tokens), "
                    f"got {tuple(attention_mask.shape)}"
                )
            if not torch.compiler.is_compiling():
                is_binary = (attention_mask == 0) | (attention_mask == 1)
                if not bool(is_binary.all()):
                    found = torch.unique(attention_mask[~is_binary])[:5].tolist()
                    raise ValueError(f"attention_mask must hold only 0 (padding) and 1 (a token), found {found}")
                if bool(attention_mask.all()):
                    attention_mask = None
        if attention_mask is None and keys == total:
            if seq_len == 1:
                return None, False
            if past == 0:
                return None, True
        query_positions = torch.arange(past, total, device=device).unsqueeze(1)  # (S, 1)
        key_positions = torch.arange(keys, device=device).unsqueeze(0)  # (1, keys)
        mask = (key_positions <= query_positions)[None, None]  # (1, 1, S, keys)
        if attention_mask is not None:
            padding = torch.ones(batch, keys, dtype=torch.bool, device=device)
            padding[:, :total] = attention_mask.bool()
            mask = (mask & padding[:, None, None, :]) | (key_positions == query_positions)
        return mask, False


class UltraFastGPTForCausalLM(UltraFastGPTPreTrainedModel, GenerationMixin):
    """The decoder + ``lm_head`` (``V x H``, no bias, tied to the token embedding): next-token logits, the shifted
    cross-entropy with ``labels``, and ``generate`` (``GenerationMixin``, with ``transformers``' KV caches)."""

    _tied_weights_keys = {"lm_head.weight": "model.embeddings.embed_tokens.weight"}

    def __init__(self, config: UltraFastGPTConfig) -> None:
        super().__init__(config)
        self.model = UltraFastGPTModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def get_output_embeddings(self) -> nn.Linear:
        return self.lm_head

    def set_output_embeddings(self, value: nn.Linear) -> None:
        self.lm_head = value

    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        position_ids: Tensor | None = None,
        past_key_values: Cache | None = None,
        labels: Tensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int = 0,
        output_hidden_states: bool | None = None,
        output_attentions: bool | None = None,
        return_dict: bool | None = None,
    ) -> CausalLMOutputWithPast | tuple:
        """``logits`` ``(B, S, V)`` (of the last ``logits_to_keep`` positions when it is > 0, as ``generate`` asks:
        the ``V x H`` head is the largest matrix of a small model); with ``labels`` ``(B, S)`` (usually
        ``input_ids``) also the mean cross-entropy of each position's prediction of the next label (label ``-100``
        is ignored). Arguments as in ``UltraFastGPTModel.forward``."""
        return_dict = self.config.return_dict if return_dict is None else return_dict
        decoded = self.model(
            input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            past_key_values=past_key_values,
            use_cache=use_cache,
            output_hidden_states=output_hidden_states,
            output_attentions=output_attentions,
            return_dict=True,
        )
        hidden_states = decoded.last_hidden_state  # (B, S, H)
        if logits_to_keep:
            hidden_states = hidden_states[:, -logits_to_keep:]
        logits = self.lm_head(hidden_states)  # (B, S or logits_to_keep, V)
        loss = None
        if labels is not None:
            if logits_to_keep:
                raise ValueError("labels need the logits of every position: leave logits_to_keep at 0")
            loss = F.cross_entropy(
                logits[:, :-1].reshape(-1, logits.shape[-1]).float(), labels[:, 1:].reshape(-1), ignore_index=-100
            )
        output = CausalLMOutputWithPast(
            loss=loss, logits=logits, past_key_values=decoded.past_key_values, hidden_states=decoded.hidden_states
        )
        return output if return_dict else output.to_tuple()

    def _validate_generated_length(self, generation_config: Any, input_ids_length: int, *args: Any) -> None:
        """``GenerationMixin``'s checks, then the context: a prompt or a requested length past
        ``max_position_embeddings`` is refused in one line before any token is generated."""
        super()._validate_generated_length(generation_config, input_ids_length, *args)
        context = self.config.max_position_embeddings
        if input_ids_length > context:
            raise ValueError(
                f"the prompt has {input_ids_length} tokens, more than the model's context of {context}; shorten it"
            )
        if generation_config.max_length > context:
            raise ValueError(
                f"the prompt ({input_ids_length} tokens) and the new tokens would reach {generation_config.max_length}"
                f" tokens, past the model's context of {context}; ask for at most {context - input_ids_length} new "
                "tokens"
            )
