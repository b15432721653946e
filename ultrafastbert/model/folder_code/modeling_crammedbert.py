# Generated from ultrafastbert/model/crammedbert/modeling.py by `make folder-code`: edit the package, not this copy.
"""crammedBERT / UltraFastBERT models (``docs/design.md``), in data-flow order: embeddings -> attention -> layer ->
encoder -> heads.

Module and parameter names are those of the published checkpoints (``encoder.layers.N.attn.self_attention.
query_key_value.weight``, ``encoder.layers.N.ffn.linear_in.weight``, ...), so their state dicts load unchanged;
only the configuration and the tied ``decoder.weight`` copy differ between the original and the clean format
(see ``convert.py``). Shapes: ``B`` batch, ``S`` sequence, ``H`` hidden, ``V`` vocabulary, ``C`` labels.

Every forward takes BERT's arguments: ``token_type_ids`` (checked against ``input_ids``' shape, then unused: there
are no segment embeddings, as in the original), ``output_attentions``, ``output_hidden_states`` and ``return_dict``
(``False``: a tuple, as ``transformers`` makes it), with the config's ``output_*`` and ``return_dict`` as defaults.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import (
    BaseModelOutput,
    MaskedLMOutput,
    QuestionAnsweringModelOutput,
    SequenceClassifierOutput,
    TokenClassifierOutput,
)
from transformers.utils import can_return_tuple

try:  # the installed ultrafastbert package, whose FFF layer has the compiled kernel
    from ultrafastbert.fff import FFF
except ImportError:  # not installed: this folder's pure-PyTorch copy
    from .fff_layer import FFF
from .model_base import FFFPreTrainedMixin
from .model_loading import HEAD_KEYS, check_tied_decoder_copy
from .configuration_crammedbert import CONFIGURATION_FILE, MODELING_FILE, CrammedBertConfig

# Additive attention bias of padded keys, as in the original (not -inf: fully padded rows stay finite).
MASKED_SCORE = -10000.0


class CrammedBertScaledSinusoidalPositions(nn.Module):
    """Sine on even, cosine on odd features of ``position * exp(-ln(10000) * 2i / H)``, times one learned scalar
    ``scale_factor``. The table is recomputed per device rather than stored: it is a function of the shape only."""

    def __init__(self, hidden_size: int, max_positions: int) -> None:
        super().__init__()
        self.hidden_size, self.max_positions = hidden_size, max_positions
        self.scale_factor = nn.Parameter(torch.full((1,), hidden_size**-0.5))
        self._tables: dict[torch.device, Tensor] = {}

    def table(self, device: torch.device) -> Tensor:
        """The fp32 ``(max_positions, H)`` table on ``device``, cached. While ``torch.compile`` or ``torch.export``
        traces, it is computed in the graph instead: a traced tensor put in the cache would outlive its trace (a
        fake tensor under ``torch.export``, breaking the next eager call)."""
        if torch.compiler.is_compiling():
            return self._compute_table(device)
        if device not in self._tables:
            self._tables[device] = self._compute_table(device)
        return self._tables[device]

    def _compute_table(self, device: torch.device) -> Tensor:
        position = torch.arange(self.max_positions, dtype=torch.float32, device=device).unsqueeze(1)
        frequency = torch.exp(
            torch.arange(0, self.hidden_size, 2, dtype=torch.float32, device=device)
            * (-math.log(10000.0) / self.hidden_size)
        )
        table = torch.zeros(self.max_positions, self.hidden_size, device=device)
        table[:, 0::2] = torch.sin(position * frequency)
        table[:, 1::2] = torch.cos(position * frequency)
        return table

    def forward(self, seq_len: int) -> Tensor:
        """``(S, H)`` position embeddings for positions ``0..S-1``."""
        scale = self.scale_factor
        return scale * self.table(scale.device)[:seq_len].to(scale.dtype)


class CrammedBertEmbeddings(nn.Module):
    """Word embedding + scaled sinusoidal positions, LayerNorm, dropout. No token types."""

    def __init__(self, config: CrammedBertConfig) -> None:
        super().__init__()
        self.word_embedding = nn.Embedding(config.vocab_size, config.hidden_size, padding_idx=config.pad_token_id)
        self.pos_embedding = CrammedBertScaledSinusoidalPositions(config.hidden_size, config.max_position_embeddings)
        self.norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.embedding_dropout_prob)

    def forward(self, input_ids: Tensor) -> Tensor:
        embeds = self.word_embedding(input_ids) + self.pos_embedding(input_ids.shape[1])  # (B, S, H)
        return self.dropout(self.norm(embeds))


class CrammedBertSelfAttention(nn.Module):
    """Multi-head self-attention with one fused, per-head-interleaved QKV projection and no biases.

    ``query_key_value`` rows are grouped by head: its output viewed as ``(B, S, heads, 3*head_dim)`` splits into
    q, k, v along the last dim. Scores are scaled by the stored ``norm_factor`` buffer (``head_dim**-0.5`` when
    fresh; a checkpoint's own value is used as is). ``attn_implementation="eager"`` selects the explicit
    computation; otherwise ``scaled_dot_product_attention`` computes the same function, except in a call that
    asks for the attention probabilities, which the fused kernel cannot return: that call computes them explicitly.
    """

    norm_factor: Tensor

    def __init__(self, config: CrammedBertConfig) -> None:
        super().__init__()
        self.config = config
        self.num_heads = config.num_attention_heads
        self.head_dim = config.hidden_size // config.num_attention_heads
        self.query_key_value = nn.Linear(config.hidden_size, 3 * config.hidden_size, bias=False)
        self.register_buffer("norm_factor", torch.tensor(self.head_dim**-0.5))
        self.dropout_prob = config.attention_probs_dropout_prob

    def forward(
        self, hidden_states: Tensor, attention_bias: Tensor | None, output_attentions: bool = False
    ) -> tuple[Tensor, Tensor | None]:
        """``hidden_states`` ``(B, S, H)``, ``attention_bias`` additive ``(B, 1, 1 or S, S)`` -> ``(B, S, H)``, and
        with ``output_attentions`` the attention probabilities ``(B, heads, S, S)`` (after dropout, as BERT's)."""
        batch, seq_len, hidden = hidden_states.shape
        qkv = self.query_key_value(hidden_states).view(batch, seq_len, self.num_heads, 3 * self.head_dim)
        query, key, value = (t.transpose(1, 2) for t in qkv.split(self.head_dim, dim=-1))  # 3 x (B, heads, S, d)
        dropout = self.dropout_prob if self.training else 0.0
        probs = None
        if output_attentions or self.config._attn_implementation == "eager":
            scores = torch.matmul(query, key.transpose(-1, -2)) * self.norm_factor  # (B, heads, S, S)
            if attention_bias is not None:
                scores = scores + attention_bias
            probs = F.dropout(torch.softmax(scores, dim=-1), p=dropout, training=self.training)
            context = torch.matmul(probs, value)  # (B, heads, S, d)
        else:
            if torch.compiler.is_compiling():
                # `scale` must be a Python float, which a traced buffer cannot become (a data-dependent read):
                # the queries carry the factor instead.
                query, scale = query * self.norm_factor, 1.0
            else:
                scale = float(self.norm_factor)
            context = F.scaled_dot_product_attention(
                query, key, value, attn_mask=attention_bias, dropout_p=dropout, scale=scale
            )
        return context.transpose(1, 2).reshape(batch, seq_len, hidden), probs if output_attentions else None


class CrammedBertAttention(nn.Module):
    """Self-attention followed by its output projection ``dense`` (no bias)."""

    def __init__(self, config: CrammedBertConfig) -> None:
        super().__init__()
        self.self_attention = CrammedBertSelfAttention(config)
        self.dense = nn.Linear(config.hidden_size, config.hidden_size, bias=False)

    def forward(
        self, hidden_states: Tensor, attention_bias: Tensor | None, output_attentions: bool = False
    ) -> tuple[Tensor, Tensor | None]:
        context, probs = self.self_attention(hidden_states, attention_bias, output_attentions)
        return self.dense(context), probs


class CrammedBertGatedGELU(nn.Module):
    """``GELUglu``: the first half of the features times GELU of the second half (the original's order)."""

    def forward(self, x: Tensor) -> Tensor:
        value, gate = x.chunk(2, dim=-1)
        return F.gelu(gate) * value


class CrammedBertFeedForward(nn.Module):
    """Dense feedforward of crammedBERT: ``dense_in`` (H -> I), GELU or gated GELU, ``dense_out`` (I or I/2 -> H)."""

    def __init__(self, config: CrammedBertConfig) -> None:
        super().__init__()
        gated = config.hidden_act == "gelu_glu"
        intermediate = config.intermediate_size
        self.dense_in = nn.Linear(config.hidden_size, intermediate, bias=False)
        self.nonlin = CrammedBertGatedGELU() if gated else nn.GELU()
        self.dense_out = nn.Linear(intermediate // 2 if gated else intermediate, config.hidden_size, bias=False)

    def forward(self, hidden_states: Tensor) -> Tensor:
        return self.dense_out(self.nonlin(self.dense_in(hidden_states)))


class CrammedBertLayer(GradientCheckpointingLayer):
    """Pre-LayerNorm transformer layer: ``x + drop(attn(norm1(x)))``, then ``x + drop(ffn(norm2(x)))`` (left out
    when ``ffn_type="none"``). Recomputed in the backward pass after ``model.gradient_checkpointing_enable()``."""

    def __init__(self, config: CrammedBertConfig) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.attn = CrammedBertAttention(config)
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
            self.ffn = CrammedBertFeedForward(config)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(
        self, hidden_states: Tensor, attention_bias: Tensor | None, output_attentions: bool = False
    ) -> tuple[Tensor, Tensor | None]:
        """``(B, S, H)`` -> ``(B, S, H)`` and the attention probabilities (``None`` unless ``output_attentions``).
        Arguments are positional: checkpointing with ``use_reentrant=True`` passes gradients to those only."""
        attended, probs = self.attn(self.norm1(hidden_states), attention_bias, output_attentions)
        hidden_states = hidden_states + self.dropout(attended)
        if self.ffn is not None:
            hidden_states = hidden_states + self.dropout(self.ffn(self.norm2(hidden_states)))
        return hidden_states, probs


class CrammedBertPreTrainedModel(FFFPreTrainedMixin, PreTrainedModel):
    """Shared ``transformers`` plumbing: config class and weight init; FFF path selection, strict loading (the task
    heads' ``HEAD_KEYS``, the tied decoder copy checked) and saving with the code from ``FFFPreTrainedMixin``."""

    config_class = CrammedBertConfig
    config: CrammedBertConfig
    base_model_prefix = "encoder"
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _no_split_modules = ["CrammedBertLayer"]
    folder_files = {CrammedBertConfig.__module__: CONFIGURATION_FILE, __name__: MODELING_FILE}

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        """The original init: ``N(0, initializer_range)`` linear/embedding weights (FFF included), zero biases,
        unit LayerNorms; plus the two non-standard tensors."""
        super()._init_weights(module)
        if isinstance(module, CrammedBertScaledSinusoidalPositions):
            init.constant_(module.scale_factor, module.hidden_size**-0.5)
        elif isinstance(module, CrammedBertSelfAttention):
            init.constant_(module.norm_factor, module.head_dim**-0.5)
        elif isinstance(module, FFF) and module.routing_offset is not None:
            init.zeros_(module.routing_offset)

    @classmethod
    def _can_set_attn_implementation(cls) -> bool:
        """``set_attn_implementation`` works: ``CrammedBertSelfAttention`` reads ``config._attn_implementation`` at
        each call (``transformers`` guesses otherwise from the source, looking for its own attention interface)."""
        return True

    @classmethod
    def is_head_key(cls, key: str) -> bool:
        return key in HEAD_KEYS

    @classmethod
    def check_checkpoint_files(cls, source: Any) -> None:
        check_tied_decoder_copy(source)


class CrammedBertModel(CrammedBertPreTrainedModel):
    """The bare encoder (``AutoModel``): embedding, pre-LN layers, final LayerNorm."""

    def __init__(self, config: CrammedBertConfig) -> None:
        super().__init__(config)
        self.embedding = CrammedBertEmbeddings(config)
        self.layers = nn.ModuleList([CrammedBertLayer(config) for _ in range(config.num_hidden_layers)])
        self.final_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embedding.word_embedding

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.embedding.word_embedding = value

    @can_return_tuple
    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        token_type_ids: Tensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
    ) -> BaseModelOutput:
        """``input_ids`` ``(B, S)``, ``attention_mask`` ``(B, S)`` (1 = attend) or ``(B, S, S)`` ->
        ``last_hidden_state`` ``(B, S, H)`` (after the final norm). ``hidden_states`` on request: the embedding
        output, then each layer's output, the last one after the final norm (so ``hidden_states[-1]`` is
        ``last_hidden_state``, as in ``transformers``' pre-norm models); ``attentions``: each layer's
        ``(B, heads, S, S)`` probabilities."""
        self._check_input_ids(input_ids)
        self._check_token_type_ids(token_type_ids, input_ids.shape)
        config = self.config
        output_attentions = config.output_attentions if output_attentions is None else output_attentions
        output_hidden_states = config.output_hidden_states if output_hidden_states is None else output_hidden_states
        attention_bias = self._attention_bias(attention_mask, input_ids.shape)
        hidden_states = self.embedding(input_ids)  # (B, S, H)
        all_hidden_states = [hidden_states] if output_hidden_states else None
        all_attentions = [] if output_attentions else None
        if attention_bias is not None:
            attention_bias = attention_bias.to(hidden_states.dtype)
        for layer in self.layers:
            hidden_states, probs = layer(hidden_states, attention_bias, output_attentions)
            if all_hidden_states is not None:
                all_hidden_states.append(hidden_states)
            if all_attentions is not None:
                all_attentions.append(probs)
        last_hidden_state = self.final_norm(hidden_states)
        if all_hidden_states is not None:
            all_hidden_states[-1] = last_hidden_state
        return BaseModelOutput(
            last_hidden_state=last_hidden_state,
            hidden_states=tuple(all_hidden_states) if all_hidden_states is not None else None,
            attentions=tuple(all_attentions) if all_attentions is not None else None,
        )

    @staticmethod
    def _check_token_type_ids(token_type_ids: Tensor | None, shape: torch.Size) -> None:
        """Segment ids are accepted for BERT-style callers (tokenizers of sentence pairs make them) and unused: the
        model has no segment embeddings. A shape other than ``input_ids``' is a caller's mistake, refused."""
        if token_type_ids is not None and (not isinstance(token_type_ids, Tensor) or token_type_ids.shape != shape):
            found = tuple(token_type_ids.shape) if isinstance(token_type_ids, Tensor) else type(token_type_ids).__name__
            raise ValueError(f"token_type_ids must be a tensor shaped like input_ids {tuple(shape)}, got {found}")

    def _check_input_ids(self, input_ids: Tensor) -> None:
        if not isinstance(input_ids, Tensor) or input_ids.dim() != 2:
            shape = tuple(input_ids.shape) if isinstance(input_ids, Tensor) else type(input_ids).__name__
            raise ValueError(f"input_ids must be a (batch, sequence) tensor, got {shape}")
        if input_ids.dtype not in (torch.int64, torch.int32):  # what the embedding look-up takes
            raise TypeError(f"input_ids must be an int64 or int32 tensor, got {input_ids.dtype} (use ids.long())")
        max_len = self.config.max_position_embeddings
        if input_ids.shape[1] > max_len:
            raise ValueError(
                f"sequence length {input_ids.shape[1]} exceeds the model's max_position_embeddings={max_len}; "
                f"truncate the input (e.g. tokenizer(..., truncation=True, max_length={max_len}))"
            )
        # The id range is a value check (a host sync and a data-dependent branch): skipped while torch.compile or
        # torch.export traces, as the attention-mask checks are. torch._check on min/max would keep it in the graph,
        # but only as a runtime assert that names no id, for a reduction and a host read per call (and a graph
        # break without fullgraph=True); a traced graph still refuses out-of-range ids at the embedding lookup.
        if not torch.compiler.is_compiling() and input_ids.numel():
            low, high = int(input_ids.min()), int(input_ids.max())
            vocab = self.config.vocab_size
            if low < 0 or high >= vocab:
                raise ValueError(
                    f"input_ids must lie in [0, {vocab}) (the model's vocab_size), got ids from {low} to {high}; "
                    "is the tokenizer the model's own?"
                )

    @staticmethod
    def _attention_bias(attention_mask: Tensor | None, shape: torch.Size) -> Tensor | None:
        """0/1 mask -> additive bias ``(1 - mask) * -10000`` broadcastable to ``(B, heads, S, S)``; ``None`` for
        an all-ones mask, whose bias is zero: attention without a mask is the same function and takes the faster
        kernels (as ``transformers`` does for SDPA). Any other value is a ``ValueError`` (a 0.5 would silently
        half-mask a key)."""
        if attention_mask is None:
            return None
        batch, seq_len = shape
        if attention_mask.shape == (batch, seq_len):
            mask = attention_mask[:, None, None, :]  # (B, 1, 1, S)
        elif attention_mask.shape == (batch, seq_len, seq_len):
            mask = attention_mask[:, None, :, :]  # (B, 1, S, S)
        else:
            raise ValueError(
                f"attention_mask must have shape {(batch, seq_len)} or {(batch, seq_len, seq_len)}, "
                f"got {tuple(attention_mask.shape)}"
            )
        # Value checks read the mask back (a host sync): skipped while torch.compile traces the model.
        if not torch.compiler.is_compiling():
            is_binary = (mask == 0) | (mask == 1)
            if not bool(is_binary.all()):
                found = torch.unique(mask[~is_binary])[:5].tolist()
                raise ValueError(f"attention_mask must hold only 0 (padding) and 1 (attend), found {found}")
            if bool(mask.all()):
                return None
        return (1.0 - mask.float()) * MASKED_SCORE


class CrammedBertForMaskedLM(CrammedBertPreTrainedModel):
    """Encoder + ``decoder`` (``V x H``, no bias, tied to the word embedding); no head transform."""

    _tied_weights_keys = {"decoder.weight": "encoder.embedding.word_embedding.weight"}

    def __init__(self, config: CrammedBertConfig) -> None:
        super().__init__(config)
        self.encoder = CrammedBertModel(config)
        self.decoder = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def get_output_embeddings(self) -> nn.Linear:
        return self.decoder

    def set_output_embeddings(self, value: nn.Linear) -> None:
        self.decoder = value

    @can_return_tuple
    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        token_type_ids: Tensor | None = None,
        labels: Tensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        sparse_prediction: bool = False,
    ) -> MaskedLMOutput:
        """``logits`` ``(B, S, V)``; with ``labels`` ``(B, S)`` also the mean cross-entropy over the labelled
        positions (label ``-100`` = not predicted).

        ``sparse_prediction=True`` (training; needs ``labels``) runs the decoder on the labelled positions only,
        as the original's sparse prediction does: ``logits`` is then ``(M, V)`` for the ``M`` labelled positions
        in row-major order, and the ``V x H`` decoder costs a quarter of the dense one at 25% masking.
        """
        encoded = self.encoder(
            input_ids,
            attention_mask,
            token_type_ids,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            return_dict=True,
        )
        hidden = encoded.last_hidden_state  # (B, S, H)
        if sparse_prediction:
            if labels is None:
                raise ValueError("sparse_prediction needs labels: it predicts the labelled positions only")
            selected = labels != -100
            labels = labels[selected]  # (M,)
            hidden = hidden[selected]  # (M, H)
        logits = self.decoder(hidden)  # (B, S, V), or (M, V)
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits.view(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=-100)
        return MaskedLMOutput(
            loss=loss, logits=logits, hidden_states=encoded.hidden_states, attentions=encoded.attentions
        )


class CrammedBertPooler(nn.Module):
    """Pool the sequence (``zero_index``: first token; ``avg``: mean over all positions, padding included, as
    in the original), then ``dense`` (H -> classifier_hidden_size, with bias), Tanh, dropout."""

    def __init__(self, config: CrammedBertConfig) -> None:
        super().__init__()
        self.pooling = config.classifier_pooling
        self.dense = nn.Linear(config.hidden_size, config.classifier_hidden_size)
        self.activation = nn.Tanh()
        self.dropout = nn.Dropout(config.classifier_dropout)

    def forward(self, hidden_states: Tensor) -> Tensor:
        pooled = hidden_states[:, 0] if self.pooling == "zero_index" else hidden_states.mean(dim=1)  # (B, H)
        return self.dropout(self.activation(self.dense(pooled)))


class CrammedBertForSequenceClassification(CrammedBertPreTrainedModel):
    """Encoder + ``pooler`` + ``head`` (``C x classifier_hidden_size``, with bias). ``num_labels`` follows the
    config; losses as in ``transformers``: 1 label = regression (MSE), integer labels = cross-entropy, float
    multi-labels = BCE (``config.problem_type`` overrides)."""

    def __init__(self, config: CrammedBertConfig) -> None:
        super().__init__(config)
        self.num_labels = config.num_labels
        self.encoder = CrammedBertModel(config)
        self.pooler = CrammedBertPooler(config)
        self.head = nn.Linear(config.classifier_hidden_size, config.num_labels)
        self.post_init()

    @can_return_tuple
    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        token_type_ids: Tensor | None = None,
        labels: Tensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
    ) -> SequenceClassifierOutput:
        encoded = self.encoder(
            input_ids,
            attention_mask,
            token_type_ids,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            return_dict=True,
        )
        logits = self.head(self.pooler(encoded.last_hidden_state))  # (B, C)
        loss = None if labels is None else self._loss(logits, labels)
        return SequenceClassifierOutput(
            loss=loss, logits=logits, hidden_states=encoded.hidden_states, attentions=encoded.attentions
        )

    def _loss(self, logits: Tensor, labels: Tensor) -> Tensor:
        problem_type = self.config.problem_type
        if problem_type is None:
            if self.num_labels == 1:
                problem_type = "regression"
            elif labels.dtype in (torch.long, torch.int):
                problem_type = "single_label_classification"
            else:
                problem_type = "multi_label_classification"
        if problem_type == "regression":
            if self.num_labels == 1:
                return F.mse_loss(logits.squeeze(-1), labels.reshape(-1).to(logits.dtype))
            return F.mse_loss(logits, labels.to(logits.dtype))
        if problem_type == "single_label_classification":
            return F.cross_entropy(logits.view(-1, self.num_labels), labels.view(-1))
        return F.binary_cross_entropy_with_logits(logits, labels.to(logits.dtype))


class CrammedBertForTokenClassification(CrammedBertPreTrainedModel):
    """Encoder + dropout + ``head`` (``C x H``, with bias) on every position; cross-entropy, label -100 ignored.

    The original class applied a ``C x classifier_hidden_size`` head to ``H``-wide states (only valid when the
    two sizes agree); this one is sized from ``H``.
    """

    def __init__(self, config: CrammedBertConfig) -> None:
        super().__init__(config)
        self.num_labels = config.num_labels
        self.encoder = CrammedBertModel(config)
        self.dropout = nn.Dropout(config.classifier_dropout)
        self.head = nn.Linear(config.hidden_size, config.num_labels)
        self.post_init()

    @can_return_tuple
    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        token_type_ids: Tensor | None = None,
        labels: Tensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
    ) -> TokenClassifierOutput:
        encoded = self.encoder(
            input_ids,
            attention_mask,
            token_type_ids,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            return_dict=True,
        )
        logits = self.head(self.dropout(encoded.last_hidden_state))  # (B, S, C)
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits.view(-1, self.num_labels), labels.reshape(-1), ignore_index=-100)
        return TokenClassifierOutput(
            loss=loss, logits=logits, hidden_states=encoded.hidden_states, attentions=encoded.attentions
        )


class CrammedBertForQuestionAnswering(CrammedBertPreTrainedModel):
    """Encoder + ``qa_outputs`` (``2 x H``, with bias, as BERT's): start and end logits of the answer span at every
    position. With ``start_positions`` and ``end_positions`` ``(B,)``, the loss is BERT's: the mean of the two
    cross-entropies, positions clamped to ``S``, which is ignored (an answer cut off by truncation)."""

    def __init__(self, config: CrammedBertConfig) -> None:
        super().__init__(config)
        self.encoder = CrammedBertModel(config)
        self.qa_outputs = nn.Linear(config.hidden_size, 2)
        self.post_init()

    @can_return_tuple
    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        token_type_ids: Tensor | None = None,
        start_positions: Tensor | None = None,
        end_positions: Tensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
    ) -> QuestionAnsweringModelOutput:
        encoded = self.encoder(
            input_ids,
            attention_mask,
            token_type_ids,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            return_dict=True,
        )
        start_logits, end_logits = self.qa_outputs(encoded.last_hidden_state).unbind(dim=-1)  # 2 x (B, S)
        loss = None
        if start_positions is not None and end_positions is not None:
            ignored = start_logits.shape[1]
            start_loss = F.cross_entropy(
                start_logits, start_positions.reshape(-1).clamp(0, ignored), ignore_index=ignored
            )
            end_loss = F.cross_entropy(end_logits, end_positions.reshape(-1).clamp(0, ignored), ignore_index=ignored)
            loss = (start_loss + end_loss) / 2
        return QuestionAnsweringModelOutput(
            loss=loss,
            start_logits=start_logits.contiguous(),
            end_logits=end_logits.contiguous(),
            hidden_states=encoded.hidden_states,
            attentions=encoded.attentions,
        )
