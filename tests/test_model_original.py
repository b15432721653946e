"""Published-format checkpoints: fixtures made by running the original code (tests/fixtures/README.md) load with
the Auto classes and reproduce the original outputs; conversion to the clean format and back is lossless."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForMaskedLM,
    AutoModelForQuestionAnswering,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    PreTrainedTokenizerFast,
)

import ultrafastbert  # noqa: F401  (registers the Auto classes)
from ultrafastbert.model import CheckpointError, CrammedBertConfig, convert_checkpoint
from ultrafastbert.model.crammedbert.convert import checkpoint_format

FIXTURES = Path(__file__).parent / "fixtures"
MLM_FIXTURES = ["mlm_fff_1x3", "mlm_fff_2x2", "mlm_dense_gluglu", "mlm_dense_gelu"]
CLS_FIXTURES = ["cls_fff_1x3_avg_3labels", "cls_dense_zero_index_1label"]
TOLERANCE = 1e-5  # max abs, fp32, eval: the acceptance bound for our default (fast) paths


def expected(name: str) -> dict[str, torch.Tensor]:
    return load_file(FIXTURES / name / "expected_outputs.safetensors")


def architecture(config: CrammedBertConfig) -> dict:
    """The config fields that define the model (not bookkeeping such as the source path or dtype)."""
    return {
        name: value
        for name, value in config.to_dict().items()
        if name in CrammedBertConfig.__dataclass_fields__
        and name not in ("dtype", "architectures", "transformers_version")
    } | {"num_labels": config.num_labels}


def max_error(got: torch.Tensor, want: torch.Tensor) -> float:
    assert got.shape == want.shape
    return (got - want).abs().max().item()


@pytest.mark.parametrize("name", MLM_FIXTURES)
def test_masked_lm_fixture_matches_original_outputs(name: str) -> None:
    model = AutoModelForMaskedLM.from_pretrained(FIXTURES / name).eval()
    want = expected(name)
    ids, mask = want["input_ids"], want["attention_mask"]
    with torch.no_grad():
        out = model(ids, mask, labels=want["mlm_labels"])
        unmasked = model(ids)
    assert out.logits.shape == (*ids.shape, model.config.vocab_size)
    assert max_error(out.logits, want["logits"]) <= TOLERANCE
    assert max_error(unmasked.logits, want["logits_no_mask"]) <= TOLERANCE
    assert max_error(out.loss, want["loss"]) <= TOLERANCE
    assert model.decoder.weight is model.encoder.embedding.word_embedding.weight


# The fixtures were recorded on one machine. On another CPU (another vendor's BLAS, another instruction set) the
# same operations in the same order take other matrix-product kernels whose float32 sums round differently: an Intel
# AVX-512 machine differs from the AMD recording by 1.4e-6, which is why bit-identity cannot be asked of any test
# that runs on unknown hardware. The bound is a few float32 units in the last place of the largest logit (5.7e-6
# and 7.6e-6 for these fixtures); a model that is wrong by one part in 10,000 in a single weight misses it 30-60
# times over (the perturbation test below).
ULPS = 8


def within_rounding(got: torch.Tensor, want: torch.Tensor) -> bool:
    """Whether ``got`` equals ``want`` up to float32 rounding: ``ULPS`` units of the largest magnitude."""
    return max_error(got, want) <= ULPS * torch.finfo(torch.float32).eps * want.abs().max().item()


def reference_logits(name: str, perturb: float = 0.0) -> torch.Tensor:
    """The fixture's logits from the path that repeats the original operations in order (eager attention, the
    reference FFF); ``perturb`` scales layer 0's feedforward output weights by ``1 + perturb``."""
    model = AutoModelForMaskedLM.from_pretrained(
        FIXTURES / name, attn_implementation="eager", fff_impl="reference"
    ).eval()
    want = expected(name)
    with torch.no_grad():
        model.encoder.layers[0].ffn.linear_out.weight.mul_(1 + perturb)
        return model(want["input_ids"], want["attention_mask"]).logits


@pytest.mark.parametrize("name", ["mlm_fff_1x3", "mlm_fff_2x2"])
def test_reference_path_with_eager_attention_matches_original_to_rounding(name: str) -> None:
    """Same operations in the same order as the original: equal to the recorded logits up to float32 rounding of
    this CPU's matrix-product kernels, on any x86 CPU."""
    assert within_rounding(reference_logits(name), expected(name)["logits"])


@pytest.mark.parametrize("name", ["mlm_fff_1x3", "mlm_fff_2x2"])
def test_rounding_bound_fails_a_wrong_model(name: str) -> None:
    """The bound above is not vacuous: one weight matrix off by one part in 10,000 is refused."""
    assert not within_rounding(reference_logits(name, perturb=1e-4), expected(name)["logits"])


@pytest.mark.parametrize("name", MLM_FIXTURES[:2] + CLS_FIXTURES[:1])
def test_auto_model_is_the_bare_encoder(name: str) -> None:
    model = AutoModel.from_pretrained(FIXTURES / name).eval()
    assert type(model).__name__ == "CrammedBertModel"
    want = expected(name)
    with torch.no_grad():
        hidden = model(want["input_ids"], want["attention_mask"]).last_hidden_state
        hidden_no_mask = model(want["input_ids"]).last_hidden_state
    assert max_error(hidden, want["hidden_states"]) <= TOLERANCE
    assert max_error(hidden_no_mask, want["hidden_states_no_mask"]) <= TOLERANCE


@pytest.mark.parametrize("name", CLS_FIXTURES)
def test_sequence_classification_fixture_matches_original(name: str) -> None:
    model = AutoModelForSequenceClassification.from_pretrained(FIXTURES / name).eval()
    want = expected(name)
    assert model.config.num_labels == want["logits"].shape[1]
    with torch.no_grad():
        out = model(want["input_ids"], want["attention_mask"], labels=want["cls_labels"])
    assert max_error(out.logits, want["logits"]) <= TOLERANCE
    assert max_error(out.loss, want["loss"]) <= TOLERANCE


def test_original_config_is_read_and_written_clean(tmp_path: Path) -> None:
    raw = json.loads((FIXTURES / "mlm_fff_2x2" / "config.json").read_text())
    config = AutoConfig.from_pretrained(FIXTURES / "mlm_fff_2x2")
    assert isinstance(config, CrammedBertConfig)
    assert (config.ffn_type, config.fff_trees, config.fff_depth) == ("fff", 2, 2)
    assert (config.hidden_size, config.num_hidden_layers, config.num_attention_heads) == (32, 2, 4)
    assert config.vocab_size == raw["arch"]["embedding"]["vocab_size"]
    assert config.max_position_embeddings == raw["arch"]["embedding"]["max_seq_length"]
    assert config.classifier_pooling == "avg"
    assert config.architectures == ["CrammedBertForMaskedLM"]
    built = AutoConfig.for_model("crammedBERT", arch=raw["arch"])
    assert isinstance(built, CrammedBertConfig)
    assert architecture(built) == architecture(config)
    config.save_pretrained(tmp_path)
    written = json.loads((tmp_path / "config.json").read_text())
    assert "arch" not in written and written["fff_trees"] == 2 and written["model_type"] == "crammedBERT"
    dense = AutoConfig.from_pretrained(FIXTURES / "mlm_dense_gluglu")
    assert (dense.ffn_type, dense.intermediate_size, dense.hidden_act) == ("dense", 64, "gelu_glu")


def test_unsupported_original_option_is_named() -> None:
    arch = json.loads((FIXTURES / "mlm_fff_1x3" / "config.json").read_text())["arch"]
    arch["attention"]["rotary_embedding"] = True
    with pytest.raises(ValueError, match="attention.rotary_embedding"):
        CrammedBertConfig(arch=arch)
    arch = json.loads((FIXTURES / "mlm_fff_1x3" / "config.json").read_text())["arch"]
    arch["embedding"]["embedding_dim"] = str(arch["hidden_size"])  # "32" is not 32: the message must show it
    with pytest.raises(ValueError, match=rf"embedding_dim='{arch['hidden_size']}' must equal hidden_size=\d"):
        CrammedBertConfig(arch=arch)


@pytest.mark.parametrize("name", ["mlm_fff_2x2", "cls_dense_zero_index_1label"])
def test_convert_to_clean_and_back_is_lossless(name: str, tmp_path: Path) -> None:
    source = FIXTURES / name
    clean = convert_checkpoint(source, tmp_path / "clean", to="clean")
    original = convert_checkpoint(clean, tmp_path / "original", to="original")
    assert (checkpoint_format(source), checkpoint_format(clean), checkpoint_format(original)) == (
        "original",
        "clean",
        "original",
    )
    with safe_open(str(clean / "model.safetensors"), "pt") as handle:
        assert "decoder.weight" not in handle.keys()
    source_weights, back = load_file(source / "model.safetensors"), load_file(original / "model.safetensors")
    assert source_weights.keys() == back.keys()
    assert all(torch.equal(source_weights[key], back[key]) for key in source_weights)
    source_arch = json.loads((source / "config.json").read_text())["arch"]
    back_config = json.loads((original / "config.json").read_text())
    assert back_config["architectures"] == json.loads((source / "config.json").read_text())["architectures"]
    round_tripped = CrammedBertConfig(arch=back_config["arch"])
    assert architecture(round_tripped) == architecture(CrammedBertConfig(arch=source_arch))
    assert (clean / "tokenizer.json").is_file() and (original / "tokenizer.json").is_file()
    auto = AutoModelForSequenceClassification if name.startswith("cls") else AutoModelForMaskedLM
    want = expected(name)
    for folder in (clean, original):
        model = auto.from_pretrained(folder).eval()
        with torch.no_grad():
            assert max_error(model(want["input_ids"], want["attention_mask"]).logits, want["logits"]) <= TOLERANCE


def test_original_tokenizer_loads_with_special_tokens_and_templates() -> None:
    folder = FIXTURES / "mlm_fff_1x3"
    for tokenizer in (AutoTokenizer.from_pretrained(folder), PreTrainedTokenizerFast.from_pretrained(folder)):
        specials = {name: getattr(tokenizer, name) for name in ("cls_token", "sep_token", "pad_token", "mask_token")}
        assert specials == {"cls_token": "<cls>", "sep_token": "<sep>", "pad_token": "<pad>", "mask_token": "<mask>"}
        assert (tokenizer.unk_token, tokenizer.bos_token, tokenizer.eos_token) == ("<unk>", "<s>", "</s>")
        single = tokenizer.convert_ids_to_tokens(tokenizer("the fox <mask>")["input_ids"])
        assert single[0] != "<cls>" and single[-2:] == ["<mask>", "<sep>"]
        pair = tokenizer.convert_ids_to_tokens(tokenizer("the fox", "a dog")["input_ids"])
        assert pair[0] == "<cls>" and pair[-1] == "<sep>" and pair.count("<sep>") == 2


def test_bare_tokenizer_json_folder_gets_the_original_special_tokens(tmp_path: Path) -> None:
    """A folder with only tokenizer.json (no tokenizer_config.json) still knows its special tokens."""
    for name in ("tokenizer.json", "config.json"):
        (tmp_path / name).write_bytes((FIXTURES / "mlm_fff_1x3" / name).read_bytes())
    bare = AutoTokenizer.from_pretrained(tmp_path)
    full = AutoTokenizer.from_pretrained(FIXTURES / "mlm_fff_1x3")
    assert (bare.mask_token, bare.pad_token_id, bare.cls_token_id) == ("<mask>", full.pad_token_id, full.cls_token_id)
    text = "the quick fox <mask> a dog"
    assert bare(text)["input_ids"] == full(text)["input_ids"]
    assert bare("a", "b")["input_ids"] == full("a", "b")["input_ids"]


def test_a_question_answering_folder_converts_to_clean_with_its_head_and_is_refused_in_the_published_format(
    tmp_path: Path,
) -> None:
    """The published format has no question-answering class: converting there is refused by name, and a clean
    conversion keeps the span head instead of silently dropping it."""
    model = AutoModelForQuestionAnswering.from_pretrained(FIXTURES / "mlm_fff_1x3")
    with torch.no_grad():
        model.qa_outputs.weight.normal_()
    model.save_pretrained(tmp_path / "qa")
    clean = convert_checkpoint(tmp_path / "qa", tmp_path / "clean", to="clean")
    back = load_file(clean / "model.safetensors")
    assert torch.equal(back["qa_outputs.weight"], model.qa_outputs.weight)
    with pytest.raises(CheckpointError, match="no class for CrammedBertForQuestionAnswering"):
        convert_checkpoint(tmp_path / "qa", tmp_path / "original", to="original")
