# Generated from ultrafastbert/model/crammedbert/configuration.py by `make folder-code`: edit the package, not this copy.
"""Configuration of the crammedBERT family: crammedBERT (dense feedforward) and UltraFastBERT (FFF feedforward).

One flat ``PretrainedConfig`` (``model_type = "crammedBERT"``) with the usual ``transformers`` field names. The
published checkpoints store their architecture as the original nested ``"arch"`` dict instead; it is accepted as
the ``arch`` keyword (so ``config.json`` files of published folders and ``AutoConfig.for_model("crammedBERT",
arch={...})`` both work), translated to the flat fields, and never written back: saving writes the clean form.
``to_arch`` gives the original dict again for ``ultrafastbert convert --to original``.

No ``from __future__ import annotations`` here: ``@strict`` checks each field against its annotation, and skips
annotations that are strings, which that import would make of all of them.
"""

import copy
import logging
import re
from typing import Any, Literal, Self

from huggingface_hub.dataclasses import strict
from transformers import PretrainedConfig

try:  # the installed ultrafastbert package, whose FFF layer has the compiled kernel
    from ultrafastbert.fff import check_impl, neurons_per_token
except ImportError:  # not installed: this folder's pure-PyTorch copy
    from .fff_layer import check_impl
    from .fff_reference import neurons_per_token
try:  # the installed ultrafastbert package, whose FFF layer has the compiled kernel
    from ultrafastbert.fff.layer import MAX_DEPTH, check_balance_rate
except ImportError:  # not installed: this folder's pure-PyTorch copy
    from .fff_layer import MAX_DEPTH, check_balance_rate

logger = logging.getLogger(__name__)

MODEL_TYPE = "crammedBERT"

# The files of model code a saved folder carries beside its config.json (written by ``portable.py``).
CONFIGURATION_FILE = "configuration_crammedbert"
MODELING_FILE = "modeling_crammedbert"

# Written into every saved config.json: which class serves which Auto class, as ``file.Class`` of the folder's own
# code (the Hub's custom-code layout, for ``trust_remote_code=True`` where this package is not installed; after
# ``import ultrafastbert`` the registered classes serve instead).
AUTO_MAP = {
    "AutoConfig": f"{CONFIGURATION_FILE}.CrammedBertConfig",
    "AutoModel": f"{MODELING_FILE}.CrammedBertModel",
    "AutoModelForMaskedLM": f"{MODELING_FILE}.CrammedBertForMaskedLM",
    "AutoModelForSequenceClassification": f"{MODELING_FILE}.CrammedBertForSequenceClassification",
    "AutoModelForTokenClassification": f"{MODELING_FILE}.CrammedBertForTokenClassification",
    "AutoModelForQuestionAnswering": f"{MODELING_FILE}.CrammedBertForQuestionAnswering",
}

# Our model class names -> the original ones (the ``architectures`` field of config.json); the original has no
# question-answering class.
ORIGINAL_CLASS_NAMES = {
    "CrammedBertModel": "ScriptableLM",
    "CrammedBertForMaskedLM": "ScriptableLMForPreTraining",
    "CrammedBertForSequenceClassification": "ScriptableLMForSequenceClassification",
    "CrammedBertForTokenClassification": "ScriptableLMForTokenClassification",
}

# Model presets by name: the published sizes, and ``tiny-*`` sizes that train in minutes on a CPU.
#   crammed-bert        crammedBERT, 16 layers x 768, GELUglu feedforward 3072 (the dense baseline)
#   ufb-KxD             UltraFastBERT with K trees of depth D per layer (ufb-1x11 is the published model)
#   tiny-crammed-bert   4 layers x 256, 4 heads, GELU feedforward 1024 (tiny-crammed-bert-W for width W)
#   tiny-ufb-KxD        4 layers x 256, 4 heads, FFF with K trees of depth D
# Dropout is off in every preset: the crammed recipe pretrains without it (finetuning turns it back on).
PRESET_NAMES = ("crammed-bert", "ufb-KxD", "tiny-crammed-bert[-W]", "tiny-ufb-KxD")
_PRESET_SIZES = {
    "base": {"hidden_size": 768, "num_hidden_layers": 16, "num_attention_heads": 12},
    "tiny": {"hidden_size": 256, "num_hidden_layers": 4, "num_attention_heads": 4},
}
_PRESET_NO_DROPOUT = {"embedding_dropout_prob": 0.0, "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}


def preset_fields(name: str) -> dict[str, Any]:
    """The config fields preset ``name`` sets (see ``PRESET_NAMES``); ``ValueError`` for an unknown name."""
    if name == "crammed-bert":
        fields = {**_PRESET_SIZES["base"], "ffn_type": "dense", "intermediate_size": 3072, "hidden_act": "gelu_glu"}
    elif match := re.fullmatch(r"ufb-(\d+)x(\d+)", name):
        fields = {**_PRESET_SIZES["base"], "ffn_type": "fff", "fff_trees": int(match[1]), "fff_depth": int(match[2])}
    elif match := re.fullmatch(r"tiny-crammed-bert(?:-(\d+))?", name):
        width = int(match[1]) if match[1] else 1024
        fields = {**_PRESET_SIZES["tiny"], "ffn_type": "dense", "intermediate_size": width, "hidden_act": "gelu"}
    elif match := re.fullmatch(r"tiny-ufb-(\d+)x(\d+)", name):
        fields = {**_PRESET_SIZES["tiny"], "ffn_type": "fff", "fff_trees": int(match[1]), "fff_depth": int(match[2])}
    else:
        raise ValueError(f"unknown model preset {name!r}; known: {', '.join(PRESET_NAMES)}")
    return {**fields, **_PRESET_NO_DROPOUT}


# Original ``nonlin`` names <-> ours.
_ORIGINAL_ACTIVATIONS = {"GELU": "gelu", "GELUglu": "gelu_glu"}

# Original arch options that change the computation; only the published crammedBERT / UltraFastBERT values
# are implemented, anything else is refused by name rather than silently computed differently.
_SUPPORTED_ARCH_VALUES: dict[tuple[str, ...], object] = {
    ("norm",): "LayerNorm",
    ("norm_scheme",): "pre",
    ("use_bias",): False,
    ("decoder_bias",): False,
    ("skip_head_transform",): True,
    ("final_norm",): True,
    ("embedding", "pos_embedding"): "scaled-sinusoidal",
    ("embedding", "normalization"): True,
    ("embedding", "stable_low_precision"): False,
    ("attention", "type"): "self-attention",
    ("attention", "causal_attention"): False,
    ("attention", "skip_output_projection"): False,
    ("attention", "qkv_bias"): False,
    ("attention", "rotary_embedding"): False,
    ("attention", "sequence_op"): "torch-softmax",
    ("attention", "seq_op_in_fp32"): False,
    ("classification_head", "include_ff_layer"): True,
    ("classification_head", "nonlin"): "Tanh",
}


@strict
class CrammedBertConfig(PretrainedConfig):
    """Architecture of a crammedBERT-family model (``docs/design.md``); defaults are UltraFastBERT-1x11-long.

    ``ffn_type="fff"`` gives UltraFastBERT-``{fff_trees}x{fff_depth}``; ``ffn_type="dense"`` gives crammedBERT
    with an ``intermediate_size`` feedforward (``hidden_act="gelu_glu"``: gated, output half as wide);
    ``ffn_type="none"`` leaves the feedforward sub-layer out (attention-only blocks: a baseline, not a published
    model, so it has no original-format ``arch``).
    ``fff_impl`` picks the FFF execution path (``"auto"``: conditional inference without grad, sparse training
    with grad; ``"reference"``: the original dense masking computation, for checks). ``fff_balance_rate > 0`` keeps
    the trees balanced by per-node routing offsets (``fff.balance``; 0, the published models' setting, turns it
    off); ``fff_balance_loss > 0`` weighs an auxiliary load-balancing loss instead (or as well). With ``arch``
    (the original nested dict), the values it defines take precedence over flat fields passed alongside it.
    """

    model_type = MODEL_TYPE

    vocab_size: int = 32768
    hidden_size: int = 768
    num_hidden_layers: int = 16
    num_attention_heads: int = 12
    max_position_embeddings: int = 128
    ffn_type: Literal["fff", "dense", "none"] = "fff"
    fff_trees: int = 1
    fff_depth: int = 11
    fff_impl: str = "auto"
    fff_balance_rate: float | int = 0.0
    fff_balance_loss: float | int = 0.0
    intermediate_size: int = 3072
    hidden_act: Literal["gelu", "gelu_glu"] = "gelu"
    layer_norm_eps: float = 1e-12
    embedding_dropout_prob: float | int = 0.1
    hidden_dropout_prob: float | int = 0.1
    attention_probs_dropout_prob: float | int = 0.1
    classifier_pooling: Literal["zero_index", "avg"] = "zero_index"
    classifier_hidden_size: int = 1024
    classifier_dropout: float | int = 0.1
    initializer_range: float = 0.02
    pad_token_id: int | None = 0
    tie_word_embeddings: bool = True

    def __post_init__(self, **kwargs: Any) -> None:
        arch = kwargs.pop("arch", None)
        if arch is not None:
            arch_kwargs = config_kwargs_from_arch(arch)
            num_labels = arch_kwargs.pop("num_labels", None)
            for name, value in arch_kwargs.items():
                setattr(self, name, value)
            if num_labels is not None:
                _reconcile_num_labels(self, num_labels, kwargs)
            ours = {original: name for name, original in ORIGINAL_CLASS_NAMES.items()}
            if self.architectures:
                self.architectures = [ours.get(name, name) for name in self.architectures]
        self.auto_map = dict(AUTO_MAP)
        super().__post_init__(**kwargs)
        self._check_sizes()

    def _check_sizes(self) -> None:
        """Refuse sizes the modules cannot be built from (a plain ``ValueError``, unlike ``@strict`` validators)."""
        if min(self.vocab_size, self.hidden_size, self.num_attention_heads, self.max_position_embeddings) < 1:
            raise ValueError("vocab_size, hidden_size, num_attention_heads and max_position_embeddings must be >= 1")
        if self.num_hidden_layers < 0:
            raise ValueError(f"num_hidden_layers must be >= 0, got {self.num_hidden_layers}")
        if self.hidden_size % 2:
            raise ValueError(f"hidden_size must be even (sine/cosine position pairs), got {self.hidden_size}")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"hidden_size ({self.hidden_size}) must be divisible by num_attention_heads "
                f"({self.num_attention_heads})"
            )
        if self.ffn_type == "fff":
            if self.fff_trees < 1 or not 0 <= self.fff_depth <= MAX_DEPTH:
                raise ValueError(
                    f"need fff_trees >= 1 and 0 <= fff_depth <= {MAX_DEPTH}, got {self.fff_trees}, {self.fff_depth}"
                )
            if self.hidden_act != "gelu":
                raise ValueError(f"FFF layers use GELU; hidden_act={self.hidden_act!r} is for dense feedforwards")
        check_impl(self.fff_impl, name="fff_impl")
        check_balance_rate(self.fff_balance_rate, name="fff_balance_rate")
        check_balance_rate(self.fff_balance_loss, name="fff_balance_loss")
        if self.ffn_type == "dense" and self.hidden_act == "gelu_glu" and self.intermediate_size % 2:
            raise ValueError(f"gelu_glu splits the intermediate features in two: {self.intermediate_size} is odd")

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> Self:
        """The config of preset ``name`` (``PRESET_NAMES``, e.g. ``"ufb-1x11"``, ``"tiny-crammed-bert-512"``);
        ``overrides`` replace any field, typically ``vocab_size`` and ``max_position_embeddings``."""
        return cls(**{**preset_fields(name), **overrides})

    @property
    def name(self) -> str:
        """Human-readable architecture name, e.g. ``UltraFastBERT-1x11`` or ``crammedBERT-3072``."""
        if self.ffn_type == "fff":
            return f"UltraFastBERT-{self.fff_trees}x{self.fff_depth}"
        if self.ffn_type == "none":
            return "crammedBERT-noFF"
        return f"crammedBERT-{self.intermediate_size}"

    @property
    def ff_neurons_per_token(self) -> int:
        """Feedforward neurons each token evaluates per layer: ``K*(D+1)`` for an FFF, the width for a dense FF."""
        if self.ffn_type == "fff":
            return neurons_per_token(self.fff_depth, self.fff_trees)
        if self.ffn_type == "none":
            return 0
        return self.intermediate_size

    def to_arch(self) -> dict[str, Any]:
        """The original nested architecture dict (as in the published ``model_config.json``) for this config."""
        if self.ffn_type == "none":
            raise ValueError("a model without feedforward layers has no original-format architecture")
        if self.ffn_type == "fff" and self.fff_balance_rate > 0:
            raise ValueError("the original format has no routing offsets: a model with fff_balance_rate > 0 has none")
        ffn: dict[str, Any]
        if self.ffn_type == "fff":
            ffn = {"intermed_type": "fff", "intermed_size": self.fff_trees, "intermed_depth": self.fff_depth}
        else:
            ffn = {"intermed_type": "ff", "intermed_size": self.intermediate_size}
        nonlin = {ours: original for original, ours in _ORIGINAL_ACTIVATIONS.items()}[self.hidden_act]
        arch: dict[str, Any] = {
            "architectures": ["ScriptableCrammedBERT"],
            "num_transformer_layers": self.num_hidden_layers,
            "hidden_size": self.hidden_size,
            **ffn,
            "hidden_dropout_prob": self.hidden_dropout_prob,
            "norm": "LayerNorm",
            "norm_eps": self.layer_norm_eps,
            "norm_scheme": "pre",
            "nonlin": nonlin,
            "tie_weights": self.tie_word_embeddings,
            "decoder_bias": False,
            # Loss over the labelled positions whatever their number: what our masked-LM loss computes.
            "sparse_prediction": False,
            "loss": "cross-entropy",
            "objective_layout": "MLM",
            "embedding": {
                "vocab_size": self.vocab_size,
                "pos_embedding": "scaled-sinusoidal",
                "dropout_prob": self.embedding_dropout_prob,
                "pad_token_id": self.pad_token_id if self.pad_token_id is not None else 0,
                "max_seq_length": self.max_position_embeddings,
                "embedding_dim": self.hidden_size,
                "normalization": True,
                "stable_low_precision": False,
            },
            "attention": {
                "type": "self-attention",
                "causal_attention": False,
                "num_attention_heads": self.num_attention_heads,
                "dropout_prob": self.attention_probs_dropout_prob,
                "skip_output_projection": False,
                "qkv_bias": False,
                "rotary_embedding": False,
                "seq_op_in_fp32": False,
                "sequence_op": "torch-softmax",
            },
            "init": {"type": "normal", "std": self.initializer_range},
            "ffn_layer_frequency": 1,
            "skip_head_transform": True,
            "use_bias": False,
            "final_norm": True,
            "num_labels": self.num_labels,
            "classification_head": {
                "pooler": self.classifier_pooling,
                "include_ff_layer": True,
                "head_dim": self.classifier_hidden_size,
                "nonlin": "Tanh",
                "classifier_dropout": self.classifier_dropout,
            },
        }
        return arch


def config_kwargs_from_arch(arch: dict[str, Any]) -> dict[str, Any]:
    """Flat ``CrammedBertConfig`` keyword arguments from an original nested architecture dict.

    Raises ``ValueError`` naming the option when the dict asks for something other than the published
    crammedBERT / UltraFastBERT architecture (e.g. rotary embeddings), instead of computing something else.
    """
    if not isinstance(arch, dict):
        raise TypeError(f"'arch' must be the original architecture dict, got {type(arch).__name__}")
    arch = copy.deepcopy(arch)
    for path, supported in _SUPPORTED_ARCH_VALUES.items():
        value = _lookup(arch, path)
        if value is not None and value != supported:
            name = ".".join(path)
            raise ValueError(
                f"original arch option {name}={value!r} is not supported (only {name}={supported!r}, the published "
                "crammedBERT/UltraFastBERT architecture)"
            )
    hidden_size = _required(arch, ("hidden_size",))
    embedding_dim = _lookup(arch, ("embedding", "embedding_dim"))
    if embedding_dim is not None and embedding_dim != hidden_size:
        raise ValueError(  # repr: a string "32" and the number 32 differ, and the message must show why
            f"original arch embedding.embedding_dim={embedding_dim!r} must equal hidden_size={hidden_size!r}"
        )
    nonlin = arch.get("nonlin", "GELU")
    if nonlin not in _ORIGINAL_ACTIVATIONS:
        raise ValueError(f"original arch nonlin={nonlin!r} is not supported (use one of {list(_ORIGINAL_ACTIVATIONS)})")
    init_type = _lookup(arch, ("init", "type"))
    if init_type not in (None, "normal"):
        logger.warning("original arch init.type=%r: fresh weights use N(0, init.std) instead", init_type)

    kwargs: dict[str, Any] = {
        "vocab_size": _required(arch, ("embedding", "vocab_size")),
        "hidden_size": hidden_size,
        "num_hidden_layers": _required(arch, ("num_transformer_layers",)),
        "num_attention_heads": _required(arch, ("attention", "num_attention_heads")),
        "max_position_embeddings": _required(arch, ("embedding", "max_seq_length")),
        "hidden_act": _ORIGINAL_ACTIVATIONS[nonlin],
    }
    intermed_type = arch.get("intermed_type") or "ff"  # absent in the original crammedBERT configs
    if intermed_type == "fff":
        kwargs["ffn_type"] = "fff"
        kwargs["fff_trees"] = _required(arch, ("intermed_size",))
        kwargs["fff_depth"] = _required(arch, ("intermed_depth",))
    elif intermed_type == "ff":
        kwargs["ffn_type"] = "dense"
        kwargs["intermediate_size"] = _required(arch, ("intermed_size",))
    else:
        raise ValueError(f"original arch intermed_type={intermed_type!r} is not supported (use 'ff' or 'fff')")
    optional = {
        "layer_norm_eps": ("norm_eps",),
        "hidden_dropout_prob": ("hidden_dropout_prob",),
        "embedding_dropout_prob": ("embedding", "dropout_prob"),
        "attention_probs_dropout_prob": ("attention", "dropout_prob"),
        "pad_token_id": ("embedding", "pad_token_id"),
        "classifier_pooling": ("classification_head", "pooler"),
        "classifier_hidden_size": ("classification_head", "head_dim"),
        "classifier_dropout": ("classification_head", "classifier_dropout"),
        "initializer_range": ("init", "std"),
        "num_labels": ("num_labels",),
    }
    for name, path in optional.items():
        value = _lookup(arch, path)
        if value is not None:
            kwargs[name] = float(value) if name == "layer_norm_eps" else value
    return kwargs


def _reconcile_num_labels(config: CrammedBertConfig, arch_num_labels: int, kwargs: dict[str, Any]) -> None:
    """``arch.num_labels`` is the task's label count (upstream cramming uses it); the UltraFastBERT fork used the
    top-level ``id2label`` instead, which silently stayed at 2. Prefer the arch value, say so when they differ."""
    explicit = kwargs.get("num_labels")
    current = explicit if explicit is not None else (len(config.id2label) if config.id2label else None)
    if current is not None and current != arch_num_labels:
        logger.warning(
            "config has num_labels=%d at the top level but arch.num_labels=%d; using %d",
            current,
            arch_num_labels,
            arch_num_labels,
        )
    kwargs.pop("num_labels", None)
    if config.id2label is None or len(config.id2label) != arch_num_labels:
        config.id2label = {i: f"LABEL_{i}" for i in range(arch_num_labels)}
        config.label2id = {label: i for i, label in config.id2label.items()}


def _lookup(arch: dict[str, Any], path: tuple[str, ...]) -> Any:
    node: Any = arch
    for key in path:
        if not isinstance(node, dict) or key not in node:
            return None
        node = node[key]
    return node


def _required(arch: dict[str, Any], path: tuple[str, ...]) -> Any:
    value = _lookup(arch, path)
    if value is None:
        raise ValueError(f"original arch dict lacks {'.'.join(path)}")
    return value
