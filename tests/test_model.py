"""crammedBERT / UltraFastBERT models on tiny random configs: Hugging Face integration, default execution paths,
task heads, input checks and strict checkpoint loading."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from model_helpers import tiny_pretrained
from safetensors.torch import load_file, save_file
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForMaskedLM,
    AutoModelForQuestionAnswering,
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
    Trainer,
    TrainingArguments,
)

import ultrafastbert
from ultrafastbert import (
    FFF,
    CheckpointError,
    CrammedBertConfig,
    CrammedBertForMaskedLM,
    CrammedBertForQuestionAnswering,
    CrammedBertForSequenceClassification,
    CrammedBertForTokenClassification,
    CrammedBertModel,
)
from ultrafastbert.model.crammedbert.convert import save_original
from ultrafastbert.model.fffbert import FFFBertConfig, FFFBertForQuestionAnswering

VOCAB, MAX_LEN = 50, 12


def tiny_config(**overrides: object) -> CrammedBertConfig:
    fields = {
        "vocab_size": VOCAB,
        "hidden_size": 16,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "max_position_embeddings": MAX_LEN,
        "fff_trees": 2,
        "fff_depth": 2,
        "intermediate_size": 24,
        "classifier_hidden_size": 20,
        "embedding_dropout_prob": 0.0,
        "hidden_dropout_prob": 0.0,
        "attention_probs_dropout_prob": 0.0,
        "classifier_dropout": 0.0,
    }
    return CrammedBertConfig(**(fields | overrides))


def tiny_model(model_class: type = CrammedBertForMaskedLM, seed: int = 0, **overrides: object) -> torch.nn.Module:
    """A tiny model with O(1) random weights (the N(0, 0.02) init makes every output nearly equal)."""
    torch.manual_seed(seed)
    model = model_class(tiny_config(**overrides))
    with torch.no_grad():
        for name, param in model.named_parameters():
            if not name.endswith("scale_factor"):
                param.copy_(torch.randn_like(param) / max(param.shape[-1], 1) ** 0.5)
    return model


def batch(seed: int = 1, size: int = 3, length: int = 10) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(0, VOCAB, (size, length), generator=generator)
    mask = torch.ones(size, length, dtype=torch.long)
    mask[1, -3:] = 0
    return input_ids, mask


def resolved_fff_paths(model: torch.nn.Module, run: callable) -> set[str]:
    """Which path each FFF layer actually takes while ``run()`` executes."""
    paths: set[str] = set()
    handles = [
        module.register_forward_pre_hook(lambda module, args: paths.add(module.resolve_impl(args[0])))
        for module in model.modules()
        if isinstance(module, FFF)
    ]
    try:
        run()
    finally:
        for handle in handles:
            handle.remove()
    return paths


# --- Hugging Face integration ---------------------------------------------------------------------------------


def test_import_registers_auto_classes() -> None:
    fields = {k: v for k, v in tiny_config().to_dict().items() if k != "model_type"}
    config = AutoConfig.for_model("crammedBERT", **fields)
    assert isinstance(config, CrammedBertConfig)
    assert type(AutoModel.from_config(config)) is CrammedBertModel
    assert type(AutoModelForMaskedLM.from_config(config)) is CrammedBertForMaskedLM
    assert type(AutoModelForSequenceClassification.from_config(config)) is CrammedBertForSequenceClassification
    assert type(AutoModelForTokenClassification.from_config(config)) is CrammedBertForTokenClassification
    assert type(AutoModelForQuestionAnswering.from_config(config)) is CrammedBertForQuestionAnswering
    fffbert = FFFBertConfig(vocab_size=VOCAB, hidden_size=16, num_hidden_layers=1, num_attention_heads=2)
    assert type(AutoModelForQuestionAnswering.from_config(fffbert)) is FFFBertForQuestionAnswering
    assert "CrammedBertForMaskedLM" in ultrafastbert.__all__
    assert "CrammedBertForQuestionAnswering" in ultrafastbert.__all__


@pytest.mark.parametrize(
    ("model_class", "auto_class", "overrides"),
    [
        (CrammedBertForMaskedLM, AutoModelForMaskedLM, {}),
        (CrammedBertForMaskedLM, AutoModelForMaskedLM, {"ffn_type": "dense", "hidden_act": "gelu_glu"}),
        (CrammedBertForSequenceClassification, AutoModelForSequenceClassification, {"num_labels": 3}),
        (CrammedBertForTokenClassification, AutoModelForTokenClassification, {"num_labels": 4}),
        (CrammedBertForQuestionAnswering, AutoModelForQuestionAnswering, {}),
    ],
)
def test_save_load_round_trip_is_exact(model_class: type, auto_class: type, overrides: dict, tmp_path: Path) -> None:
    model = tiny_model(model_class, **overrides).eval()
    model.save_pretrained(tmp_path)
    written = json.loads((tmp_path / "config.json").read_text())
    assert "arch" not in written and written["model_type"] == "crammedBERT"
    assert written["auto_map"][auto_class.__name__] == f"modeling_crammedbert.{model_class.__name__}"
    assert (tmp_path / "modeling_crammedbert.py").is_file()  # the code travels with the folder
    assert "decoder.weight" not in load_file(tmp_path / "model.safetensors")
    loaded = auto_class.from_pretrained(tmp_path).eval()
    assert type(loaded) is model_class
    expected_state, loaded_state = model.state_dict(), loaded.state_dict()
    assert expected_state.keys() == loaded_state.keys()
    assert all(torch.equal(expected_state[key], loaded_state[key]) for key in expected_state)
    input_ids, mask = batch()
    with torch.no_grad():
        assert all(
            torch.equal(a, b)
            for a, b in zip(model(input_ids, mask).to_tuple(), loaded(input_ids, mask).to_tuple(), strict=True)
        )
    assert type(AutoModel.from_pretrained(tmp_path)) is CrammedBertModel


# --- execution paths ------------------------------------------------------------------------------------------


def test_fast_fff_paths_are_the_default_and_reference_is_selectable() -> None:
    model = tiny_model().eval()
    input_ids, mask = batch()
    with torch.no_grad():
        inference_paths = resolved_fff_paths(model, lambda: model(input_ids, mask))
        fast = model(input_ids, mask).logits
    assert inference_paths and not inference_paths & {"reference", "sparse"}
    model.train()
    training_paths = resolved_fff_paths(model, lambda: model(input_ids, mask).logits.sum().backward())
    assert training_paths and "reference" not in training_paths
    with pytest.raises(ValueError, match="unknown FFF impl"):
        model.set_fff_impl("magic")
    model.eval().set_fff_impl("reference")
    assert model.config.fff_impl == "reference"
    with torch.no_grad():
        assert resolved_fff_paths(model, lambda: model(input_ids, mask)) == {"reference"}
        torch.testing.assert_close(model(input_ids, mask).logits, fast, rtol=0, atol=1e-5)


def test_training_gradients_match_the_reference() -> None:
    """The sparse training path gives the gradients of the original masking computation."""
    input_ids, mask = batch()
    labels = torch.where(torch.rand(input_ids.shape, generator=torch.Generator().manual_seed(2)) < 0.3, input_ids, -100)
    gradients = {}
    for impl in ("auto", "reference"):
        model = tiny_model().train()
        model.set_fff_impl(impl)
        model(input_ids, mask, labels=labels).loss.backward()
        gradients[impl] = {name: param.grad for name, param in model.named_parameters()}
    for name, grad in gradients["reference"].items():
        torch.testing.assert_close(gradients["auto"][name], grad, rtol=1e-4, atol=1e-5, msg=name)


def test_sdpa_attention_matches_eager() -> None:
    input_ids, mask = batch()
    outputs = {}
    for implementation in ("eager", "sdpa"):
        model = tiny_model(CrammedBertModel).eval()
        model.set_attn_implementation(implementation)
        assert model.config._attn_implementation == implementation
        with torch.no_grad():
            outputs[implementation] = (model(input_ids, mask).last_hidden_state, model(input_ids).last_hidden_state)
    for eager, sdpa in zip(outputs["eager"], outputs["sdpa"], strict=True):
        torch.testing.assert_close(sdpa, eager, rtol=0, atol=1e-5)


def test_all_ones_mask_is_dropped_and_padding_is_still_masked() -> None:
    """An all-ones mask takes the unmasked kernels and gives the unmasked output; a real mask still hides padding."""
    model = tiny_model(CrammedBertModel).eval()
    input_ids, mask = batch()
    ones = torch.ones_like(mask)
    assert model._attention_bias(ones, input_ids.shape) is None
    assert model._attention_bias(mask, input_ids.shape) is not None
    with torch.no_grad():
        torch.testing.assert_close(
            model(input_ids, ones).last_hidden_state, model(input_ids).last_hidden_state, rtol=0, atol=0
        )
        padded = model(input_ids, mask).last_hidden_state
        changed_padding = input_ids.clone()
        changed_padding[1, -3:] = (changed_padding[1, -3:] + 1) % VOCAB
        repadded = model(changed_padding, mask).last_hidden_state
    torch.testing.assert_close(repadded[1, :-3], padded[1, :-3], rtol=0, atol=1e-6)
    assert not torch.allclose(repadded[1, -3:], padded[1, -3:])


def test_hidden_states_on_request() -> None:
    """The embedding output, then each layer's; the last after the final norm, so that it is ``last_hidden_state``
    (as in BERT and transformers' pre-norm models; it used to be the last layer's output before the norm)."""
    model = tiny_model(CrammedBertModel).eval()
    input_ids, mask = batch()
    with torch.no_grad():
        out = model(input_ids, mask, output_hidden_states=True)
        embedded = model.embedding(input_ids)
        first_layer, _ = model.layers[0](embedded, model._attention_bias(mask, input_ids.shape))
    assert len(out.hidden_states) == model.config.num_hidden_layers + 1
    assert all(h.shape == (*input_ids.shape, 16) for h in out.hidden_states)
    assert torch.equal(out.hidden_states[-1], out.last_hidden_state)
    assert torch.equal(out.hidden_states[0], embedded)
    torch.testing.assert_close(out.hidden_states[1], first_layer)


# --- BERT's arguments -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "model_class",
    [
        CrammedBertModel,
        CrammedBertForMaskedLM,
        CrammedBertForSequenceClassification,
        CrammedBertForTokenClassification,
        CrammedBertForQuestionAnswering,
    ],
)
def test_bert_arguments_are_accepted_and_attentions_returned(model_class: type) -> None:
    """``model(ids, attention_mask=m, token_type_ids=t, return_dict=False, output_attentions=True)``: a tuple of
    the usual outputs and one ``(B, heads, S, S)`` probability map per layer, which the SDPA model computes the
    eager way for that call; segment ids change nothing (there are no segment embeddings)."""
    model = tiny_model(model_class).eval()
    eager = tiny_model(model_class, attn_implementation="eager").eval()
    assert model.config._attn_implementation == "sdpa"
    input_ids, mask = batch()
    token_type_ids = torch.zeros_like(input_ids)
    token_type_ids[:, 5:] = 1
    with torch.no_grad():
        plain = model(input_ids, mask)
        outputs = model(input_ids, attention_mask=mask, token_type_ids=token_type_ids, return_dict=False,
                        output_attentions=True)  # fmt: skip
        expected = eager(input_ids, attention_mask=mask, output_attentions=True)
    assert isinstance(outputs, tuple) and len(outputs) == len(plain.to_tuple()) + 1
    for got, want in zip(outputs[:-1], plain.to_tuple(), strict=True):
        torch.testing.assert_close(got, want)
    attentions = outputs[-1]
    assert len(attentions) == model.config.num_hidden_layers
    for got, want in zip(attentions, expected.attentions, strict=True):
        assert got.shape == (3, 4, 10, 10)
        torch.testing.assert_close(got, want)
        torch.testing.assert_close(got.sum(-1), torch.ones(3, 4, 10))
        assert got[1, :, :, -3:].max() < 1e-3  # padded keys get (almost) no attention
    assert plain.attentions is None


def test_config_defaults_for_outputs_and_return_dict() -> None:
    model = tiny_model(CrammedBertForMaskedLM, output_attentions=True, output_hidden_states=True).eval()
    input_ids, mask = batch()
    with torch.no_grad():
        out = model(input_ids, mask)
        assert len(out.attentions) == 2 and len(out.hidden_states) == 3
        assert model(input_ids, mask, output_attentions=False).attentions is None
        model.config.return_dict = False
        assert isinstance(model(input_ids, mask), tuple)
        assert model(input_ids, mask, return_dict=True).logits.shape == (3, 10, VOCAB)


def test_token_type_ids_of_another_shape_are_refused() -> None:
    model = tiny_model(CrammedBertForSequenceClassification).eval()
    input_ids, mask = batch()
    with pytest.raises(
        ValueError, match=r"token_type_ids must be a tensor shaped like input_ids \(3, 10\), got \(3, 9\)"
    ):
        model(input_ids, mask, token_type_ids=torch.zeros(3, 9, dtype=torch.long))


@pytest.mark.parametrize(
    ("ffn_type", "enable"), [("dense", "gradient_checkpointing_enable"), ("fff", "activation_checkpointing_enable")]
)
def test_gradient_checkpointing_recomputes_layers_and_keeps_the_gradients(ffn_type: str, enable: str) -> None:
    """Both names of the switch (transformers 5 calls it activation checkpointing, the old name still works)."""
    labels = torch.tensor([0, 2, 1])
    grads, calls = [], []
    for checkpointing in (False, True):
        model = tiny_model(CrammedBertForSequenceClassification, num_labels=3, ffn_type=ffn_type).train()
        assert model.supports_gradient_checkpointing
        if checkpointing:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)  # the old name is deprecated
                getattr(model, enable)()
            assert all(layer.gradient_checkpointing for layer in model.encoder.layers)
        calls.append(0)
        model.encoder.layers[0].attn.register_forward_hook(lambda *_: calls.__setitem__(-1, calls[-1] + 1))
        model(*batch(), labels=labels).loss.backward()
        grads.append({name: param.grad for name, param in model.named_parameters()})
    assert calls == [1, 2]  # the checkpointed layer ran again in the backward pass
    for name, grad in grads[0].items():
        torch.testing.assert_close(grads[1][name], grad, msg=name)


def test_trainer_with_gradient_checkpointing(tmp_path: Path) -> None:
    model = tiny_model(CrammedBertForSequenceClassification, num_labels=2)
    input_ids, mask = batch(size=8)
    rows = [
        {"input_ids": i, "attention_mask": m, "labels": int(i[0]) % 2} for i, m in zip(input_ids, mask, strict=True)
    ]
    args = TrainingArguments(str(tmp_path), activation_checkpointing=True, max_steps=2, per_device_train_batch_size=4,
                             report_to=[], save_strategy="no", use_cpu=True, logging_steps=1)  # fmt: skip
    before = model.encoder.layers[0].attn.dense.weight.clone()
    Trainer(model=model, args=args, train_dataset=rows).train()
    assert all(layer.gradient_checkpointing for layer in model.encoder.layers)
    assert not torch.equal(model.encoder.layers[0].attn.dense.weight, before)


# --- question answering ---------------------------------------------------------------------------------------


def test_question_answering_loss_is_berts() -> None:
    """The mean of the start and end cross-entropies; a position past the sequence (the answer was truncated
    away) is clamped to ``S`` and ignored."""
    model = tiny_model(CrammedBertForQuestionAnswering).eval()
    input_ids, mask = batch()
    starts, ends = torch.tensor([1, 4, 40]), torch.tensor([2, 6, 41])
    with torch.no_grad():
        out = model(input_ids, mask, start_positions=starts, end_positions=ends)
    assert out.start_logits.shape == out.end_logits.shape == (3, 10)
    expected = (F.cross_entropy(out.start_logits[:2], starts[:2]) + F.cross_entropy(out.end_logits[:2], ends[:2])) / 2
    torch.testing.assert_close(out.loss, expected)
    model.train()
    model(input_ids, mask, start_positions=starts, end_positions=ends).loss.backward()
    assert (
        model.qa_outputs.weight.grad.abs().sum() > 0 and model.encoder.layers[0].attn.dense.weight.grad.abs().sum() > 0
    )


def test_question_answering_starts_from_a_masked_lm_folder(tmp_path: Path) -> None:
    tiny_model(CrammedBertForMaskedLM).save_pretrained(tmp_path)
    model = AutoModelForQuestionAnswering.from_pretrained(tmp_path)
    assert type(model) is CrammedBertForQuestionAnswering
    state = load_file(tmp_path / "model.safetensors")
    del state["encoder.final_norm.weight"]  # a missing encoder weight is still refused by name
    save_file(state, tmp_path / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match="encoder.final_norm.weight"):
        AutoModelForQuestionAnswering.from_pretrained(tmp_path)


# --- heads ----------------------------------------------------------------------------------------------------


def test_masked_lm_loss_counts_labelled_positions_only() -> None:
    model = tiny_model().eval()
    input_ids, mask = batch()
    labels = torch.full_like(input_ids, -100)
    labels[0, 2], labels[2, 5] = 7, 11
    with torch.no_grad():
        out = model(input_ids, mask, labels=labels)
    assert out.logits.shape == (*input_ids.shape, VOCAB)
    picked = out.logits[[0, 2], [2, 5]]
    torch.testing.assert_close(out.loss, F.cross_entropy(picked, torch.tensor([7, 11])))


def test_sparse_prediction_gives_the_dense_loss_and_gradients() -> None:
    model = tiny_model().train()
    input_ids, mask = batch()
    labels = torch.full_like(input_ids, -100)
    labels[0, 2], labels[1, 0], labels[2, 5] = 7, 3, 11
    dense = model(input_ids, mask, labels=labels)
    dense.loss.backward()
    dense_grads = {name: p.grad.clone() for name, p in model.named_parameters()}
    model.zero_grad()
    sparse = model(input_ids, mask, labels=labels, sparse_prediction=True)
    sparse.loss.backward()
    assert sparse.logits.shape == (3, VOCAB)
    torch.testing.assert_close(sparse.logits, dense.logits[[0, 1, 2], [2, 0, 5]])
    torch.testing.assert_close(sparse.loss, dense.loss)
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.grad, dense_grads[name], msg=name)
    with pytest.raises(ValueError, match="needs labels"):
        model(input_ids, mask, sparse_prediction=True)


def one_training_step(model: torch.nn.Module, labels: torch.Tensor) -> torch.Tensor:
    """One AdamW step; returns the loss before it, and checks every parameter got a gradient and moved."""
    input_ids, mask = batch()
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    before = {name: param.detach().clone() for name, param in model.named_parameters()}
    loss = model(input_ids, mask, labels=labels).loss
    loss.backward()
    optimizer.step()
    assert torch.isfinite(loss)
    for name, param in model.named_parameters():
        assert param.grad is not None, name
    moved = [name for name, param in model.named_parameters() if not torch.equal(param, before[name])]
    assert any(name.startswith("head.") for name in moved) and any(".attn." in name for name in moved)
    return loss


def test_sequence_classification_with_three_labels_trains_one_step() -> None:
    model = tiny_model(CrammedBertForSequenceClassification, num_labels=3)
    assert model.head.weight.shape == (3, 20) and model.config.num_labels == 3
    labels = torch.tensor([0, 2, 1])
    with torch.no_grad():
        logits = model.eval()(*batch()).logits
    assert logits.shape == (3, 3)
    loss = one_training_step(model, labels)
    torch.testing.assert_close(loss, F.cross_entropy(logits, labels), rtol=1e-5, atol=1e-6)


def test_sequence_classification_with_one_label_is_regression() -> None:
    model = tiny_model(CrammedBertForSequenceClassification, num_labels=1)
    labels = torch.tensor([0.5, -1.0, 2.0])
    with torch.no_grad():
        logits = model.eval()(*batch()).logits
    assert logits.shape == (3, 1)
    loss = one_training_step(model, labels)
    torch.testing.assert_close(loss, F.mse_loss(logits[:, 0], labels), rtol=1e-5, atol=1e-6)


def test_token_classification() -> None:
    model = tiny_model(CrammedBertForTokenClassification, num_labels=4)
    input_ids, mask = batch()
    labels = torch.randint(0, 4, input_ids.shape, generator=torch.Generator().manual_seed(3))
    labels[mask == 0] = -100
    with torch.no_grad():
        out = model.eval()(input_ids, mask, labels=labels)
    assert out.logits.shape == (*input_ids.shape, 4)
    kept = labels != -100
    torch.testing.assert_close(out.loss, F.cross_entropy(out.logits[kept], labels[kept]))
    one_training_step(model, labels)


# --- input checks ---------------------------------------------------------------------------------------------


def test_input_ids_outside_the_vocabulary_are_refused() -> None:
    model = tiny_model(CrammedBertModel).eval()
    input_ids, mask = batch()
    for bad in (VOCAB, -1):
        corrupted = input_ids.clone()
        corrupted[1, 4] = bad
        with pytest.raises(ValueError, match=f"vocab_size.*{bad}"):
            model(corrupted, mask)
    for wrong in (torch.float32, torch.uint8, torch.int16, torch.bool):
        with pytest.raises(TypeError, match=rf"input_ids must be an int64 or int32 tensor, got {wrong}"):
            model(input_ids.to(wrong), mask)
    assert model(input_ids.int(), mask).last_hidden_state.shape[:2] == input_ids.shape
    with pytest.raises(ValueError, match=r"\(batch, sequence\)"):
        model(input_ids[0], mask[0])


def test_sequences_longer_than_max_length_are_refused() -> None:
    model = tiny_model().eval()
    too_long = torch.zeros(2, MAX_LEN + 1, dtype=torch.long)
    with pytest.raises(ValueError, match=f"sequence length {MAX_LEN + 1} exceeds.*max_position_embeddings={MAX_LEN}"):
        model(too_long)
    model(too_long[:, :MAX_LEN])


def test_attention_mask_of_wrong_shape_is_refused() -> None:
    model = tiny_model(CrammedBertModel).eval()
    input_ids, mask = batch()
    with pytest.raises(ValueError, match="attention_mask must have shape"):
        model(input_ids, mask[:, :-1])


def test_attention_mask_values_other_than_0_and_1_are_refused() -> None:
    model = tiny_model(CrammedBertModel).eval()
    input_ids, mask = batch()
    for bad in (2, -1):
        corrupted = mask.clone()
        corrupted[0, 3] = bad
        with pytest.raises(ValueError, match=rf"only 0 \(padding\) and 1 \(attend\), found \[{bad}\]"):
            model(input_ids, corrupted)
    with pytest.raises(ValueError, match=r"found \[0.5"):
        model(input_ids, mask.float() * 0.5)
    expected = model(input_ids, mask.bool()).last_hidden_state  # booleans are 0/1 too
    torch.testing.assert_close(model(input_ids, mask.float()).last_hidden_state, expected)


def test_attention_mask_check_is_skipped_while_compiling() -> None:
    _, mask = batch()

    def bias(mask: torch.Tensor) -> torch.Tensor:
        return CrammedBertModel._attention_bias(mask, mask.shape)

    compiled = torch.compile(bias, backend="eager", fullgraph=True)  # a data-dependent branch would raise
    torch.testing.assert_close(compiled(mask), bias(mask))


def test_invalid_configs_are_refused() -> None:
    with pytest.raises(ValueError, match="divisible"):
        tiny_config(num_attention_heads=5)
    with pytest.raises(ValueError, match="fff_impl"):
        tiny_config(fff_impl="magic")
    with pytest.raises(ValueError, match="fff_depth <= 20, got 2, 99"):
        CrammedBertConfig.from_preset("tiny-ufb-2x99")


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("ffn_type", "bogus", r"one of \('fff', 'dense', 'none'\)"),
        ("hidden_act", "bogus", r"one of \('gelu', 'gelu_glu'\)"),
        ("classifier_pooling", "first", "one of"),
        ("hidden_size", "16", "expected int, got str"),
        ("num_hidden_layers", 2.0, "expected int, got float"),
    ],
)
def test_config_values_of_the_wrong_kind_are_refused_by_name(key: str, value: object, expected: str) -> None:
    from huggingface_hub.errors import StrictDataclassFieldValidationError

    with pytest.raises(StrictDataclassFieldValidationError, match=rf"(?s)field '{key}'.*{expected}"):
        tiny_config(**{key: value})


def test_config_json_of_the_wrong_types_names_the_key(tmp_path: Path) -> None:
    from huggingface_hub.errors import StrictDataclassFieldValidationError

    folder = saved(tmp_path, tiny_model())
    edit_config(folder, num_attention_heads="4")
    with pytest.raises(StrictDataclassFieldValidationError, match="field 'num_attention_heads'"):
        AutoModelForMaskedLM.from_pretrained(folder)


# --- bad checkpoints ------------------------------------------------------------------------------------------


def saved(tmp_path: Path, model: torch.nn.Module, original: bool = False) -> Path:
    folder = tmp_path / "checkpoint"
    save_original(model, folder) if original else model.save_pretrained(folder)
    return folder


def edit_weights(folder: Path, edit: callable) -> None:
    weights = load_file(folder / "model.safetensors")
    edit(weights)
    save_file(weights, folder / "model.safetensors", metadata={"format": "pt"})


def edit_config(folder: Path, **changes: object) -> None:
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps(config | changes))


def test_missing_key_is_named(tmp_path: Path) -> None:
    folder = saved(tmp_path, tiny_model())
    edit_weights(folder, lambda w: w.pop("encoder.layers.1.norm2.weight"))
    with pytest.raises(CheckpointError, match=r"missing \(1\): encoder\.layers\.1\.norm2\.weight"):
        AutoModelForMaskedLM.from_pretrained(folder)


def test_unexpected_key_is_named(tmp_path: Path) -> None:
    folder = saved(tmp_path, tiny_model())
    edit_weights(folder, lambda w: w.update({"encoder.layers.0.attn.extra.weight": torch.zeros(2)}))
    with pytest.raises(CheckpointError, match=r"unexpected \(1\): encoder\.layers\.0\.attn\.extra\.weight"):
        AutoModelForMaskedLM.from_pretrained(folder)


def test_feedforward_type_mismatch_is_explained(tmp_path: Path) -> None:
    folder = saved(tmp_path, tiny_model(ffn_type="dense"))
    edit_config(folder, ffn_type="fff")
    with pytest.raises(CheckpointError) as error:
        AutoModelForMaskedLM.from_pretrained(folder)
    message = str(error.value)
    assert "encoder.layers.0.ffn.linear_in.weight" in message and "encoder.layers.0.ffn.dense_in.weight" in message
    assert "ffn_type" in message


def test_mis_shaped_key_is_named(tmp_path: Path) -> None:
    folder = saved(tmp_path, tiny_model())
    edit_config(folder, vocab_size=VOCAB + 5)
    with pytest.raises(CheckpointError, match=r"encoder\.embedding\.word_embedding\.weight \(checkpoint \(50, 16\)"):
        AutoModelForMaskedLM.from_pretrained(folder)


def test_classifier_with_another_label_count_is_explained(tmp_path: Path) -> None:
    folder = saved(tmp_path, tiny_model(CrammedBertForSequenceClassification, num_labels=3))
    with pytest.raises(CheckpointError, match=r"(?s)head\.weight.*num_labels"):
        AutoModelForSequenceClassification.from_pretrained(folder, num_labels=2)
    fresh = AutoModelForSequenceClassification.from_pretrained(folder, num_labels=2, ignore_mismatched_sizes=True)
    assert fresh.head.weight.shape == (2, 20)


def test_classifier_starts_from_a_masked_lm_checkpoint(tmp_path: Path) -> None:
    mlm = tiny_model()
    folder = saved(tmp_path, mlm, original=True)
    classifier = AutoModelForSequenceClassification.from_pretrained(folder, num_labels=3)
    assert classifier.head.weight.shape == (3, 20)
    assert torch.equal(classifier.encoder.layers[1].ffn.linear_in.weight, mlm.encoder.layers[1].ffn.linear_in.weight)


def test_tied_copy_that_differs_is_refused(tmp_path: Path) -> None:
    folder = saved(tmp_path, tiny_model(), original=True)
    edit_weights(folder, lambda w: w["decoder.weight"].add_(1e-3))
    with pytest.raises(CheckpointError, match="decoder.weight differs from encoder.embedding.word_embedding.weight"):
        AutoModelForMaskedLM.from_pretrained(folder)
    edit_weights(folder, lambda w: w.pop("encoder.embedding.word_embedding.weight"))
    with pytest.raises(CheckpointError, match="no encoder.embedding.word_embedding.weight"):
        AutoModelForMaskedLM.from_pretrained(folder)


def corrupt_tensor_bytes(path: Path, key: str) -> None:
    """Overwrite the first 4 bytes of tensor ``key`` in a safetensors file with 0xFF (a float32 NaN), in place."""
    raw = bytearray(path.read_bytes())
    header_size = int.from_bytes(raw[:8], "little")
    start = json.loads(raw[8 : 8 + header_size])[key]["data_offsets"][0] + 8 + header_size
    raw[start : start + 4] = b"\xff" * 4
    path.write_bytes(bytes(raw))


def test_weights_that_are_not_finite_are_refused_by_name(tmp_path: Path) -> None:
    folder = saved(tmp_path, tiny_model())
    corrupt_tensor_bytes(folder / "model.safetensors", "encoder.layers.1.ffn.linear_out.weight")
    with pytest.raises(CheckpointError, match=r"non-finite.*encoder\.layers\.1\.ffn\.linear_out\.weight \(1 of"):
        AutoModelForMaskedLM.from_pretrained(folder)


@pytest.mark.parametrize("damage", ["truncated", "garbled header"])
def test_a_corrupt_weights_file_is_a_checkpoint_error(tmp_path: Path, damage: str) -> None:
    folder = saved(tmp_path, tiny_model())
    weights = folder / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) - 256] if damage == "truncated" else data[:8] + b"#" * 16 + data[24:])
    with pytest.raises(CheckpointError, match="corrupt weights file"):
        AutoModelForMaskedLM.from_pretrained(folder)


# --- sentence-transformers ------------------------------------------------------------------------------------


def test_sentence_transformers_wraps_a_saved_folder(tmp_path: Path) -> None:
    """sentence-transformers loads the folder through the Auto classes and calls the encoder with BERT's arguments
    (``return_dict=True``); its mean-pooled embeddings are those of the model, and survive its save and load."""
    pytest.importorskip("sentence_transformers")
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Pooling, Transformer

    folder = tmp_path / "folder"
    tokenizer = tiny_pretrained(folder, ["the", "a", "film", "was", "good", "bad"], vocab_size=40, max_positions=16)
    transformer = Transformer(str(folder), max_seq_length=16)
    assert type(transformer.auto_model) is CrammedBertModel
    pooling = Pooling(transformer.get_embedding_dimension(), "mean")
    encoder = SentenceTransformer(modules=[transformer, pooling], device="cpu")
    sentences = ["the film was good", "a bad film"]
    embeddings = encoder.encode(sentences, convert_to_tensor=True)
    tokens = tokenizer(sentences, return_tensors="pt", padding=True)
    with torch.no_grad():
        hidden = AutoModel.from_pretrained(folder)(**tokens).last_hidden_state
    mask = tokens["attention_mask"].unsqueeze(-1).float()
    torch.testing.assert_close(embeddings, (hidden * mask).sum(1) / mask.sum(1))
    encoder.save(str(tmp_path / "sentence-encoder"))
    again = SentenceTransformer(str(tmp_path / "sentence-encoder"), device="cpu")
    torch.testing.assert_close(again.encode(sentences, convert_to_tensor=True), embeddings)
