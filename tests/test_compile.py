"""Whole models under ``torch.compile(fullgraph=True)`` and ``torch.export`` with a dynamic sequence length: dense
and FFF, masked-LM and classification heads, with and without an attention mask, against eager; the eager input
checks are unchanged."""

from __future__ import annotations

import pytest
import torch
from torch._dynamo.testing import CompileCounterWithBackend
from torch.export import Dim
from torch.testing import assert_close

from ultrafastbert import CrammedBertConfig, CrammedBertForMaskedLM, CrammedBertForSequenceClassification
from ultrafastbert.fff import kernels

VOCAB, MAX_LEN = 37, 24
# Loaded before anything is compiled, as any eager call would load it: Dynamo cannot trace the loader's lock.
KERNEL = kernels.available()
FFN_CONFIGS = {
    "dense": {"ffn_type": "dense", "intermediate_size": 22, "hidden_act": "gelu_glu"},
    "fff": {"ffn_type": "fff", "fff_trees": 2, "fff_depth": 3},
}
HEADS = {"mlm": CrammedBertForMaskedLM, "classifier": CrammedBertForSequenceClassification}
# Outputs are compared with assert_close's float32 defaults (rtol 1.3e-6, atol 1e-5): traced graphs scale the
# queries before the attention product rather than the scores after it, and Inductor fuses and reorders the
# float32 reductions (LayerNorm, softmax, matmul); measured, that moves O(1) logits by at most 2.4e-7 (2 ulps).


def random_model(ffn: str, head: str, seed: int = 0) -> torch.nn.Module:
    """A tiny eval-mode model with odd sizes and O(1) random weights, biases included (the N(0, 0.02) init makes
    outputs nearly equal, and FFF tokens take different paths only with non-zero node biases)."""
    config = CrammedBertConfig(
        vocab_size=VOCAB,
        hidden_size=18,
        num_hidden_layers=2,
        num_attention_heads=3,
        max_position_embeddings=MAX_LEN,
        classifier_hidden_size=11,
        num_labels=3,
        **FFN_CONFIGS[ffn],
    )
    torch.manual_seed(seed)
    model = HEADS[head](config)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if not name.endswith("scale_factor"):
                param.copy_(torch.randn_like(param) / max(param.shape[-1], 1) ** 0.5)
    return model.eval()


def random_batch(length: int, seed: int = 1, size: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    """Random ids and a 0/1 mask whose second row ends in padding."""
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(0, VOCAB, (size, length), generator=generator)
    mask = torch.ones(size, length, dtype=torch.long)
    mask[1, length // 2 :] = 0
    return input_ids, mask


def inputs(length: int, masked: bool, seed: int = 1, size: int = 3) -> tuple[torch.Tensor, ...]:
    input_ids, mask = random_batch(length, seed=seed, size=size)
    return (input_ids, mask) if masked else (input_ids,)


def fff_ops(graph: torch.fx.Graph) -> set[str]:
    return {str(node.target) for node in graph.nodes if "ultrafastbert" in str(node.target)}


def cases(*fast: tuple[str, str, bool]) -> list:
    """Every (feedforward, head, mask) combination; those not in ``fast`` are ``slow`` (a trace takes seconds)."""
    return [
        pytest.param(ffn, head, masked, id=f"{ffn}-{head}-{'mask' if masked else 'no-mask'}", marks=marks)
        for ffn in FFN_CONFIGS
        for head in HEADS
        for masked in (True, False)
        for marks in [() if (ffn, head, masked) in fast else pytest.mark.slow]
    ]


# The fast cases meet every value of each axis under both tracers.
@pytest.mark.parametrize(("ffn", "head", "masked"), cases(("fff", "mlm", True), ("dense", "classifier", False)))
def test_compile_fullgraph_matches_eager_at_two_lengths(ffn, head, masked):
    """One graph, no break, no recompile for a second sequence length (``aot_eager``: Dynamo and AOTAutograd
    trace as for Inductor, without its C++ build)."""
    torch.compiler.reset()
    model = random_model(ffn, head)
    backend = CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(model, backend=backend, fullgraph=True)
    for length in (10, 17):
        args = inputs(length, masked)
        for tensor in args:
            torch._dynamo.mark_dynamic(tensor, 1)
        with torch.no_grad():
            assert_close(compiled(*args).logits, model(*args).logits)
    assert backend.frame_count == 1
    if ffn == "fff" and KERNEL:
        assert fff_ops(backend.graphs[0].graph) == {"ultrafastbert.fff_infer.default"}


@pytest.mark.parametrize(("ffn", "head", "masked"), cases(("fff", "classifier", False), ("dense", "mlm", True)))
def test_export_with_dynamic_length_matches_eager(ffn, head, masked):
    """Exported before any eager call (the position table must not be cached from the trace), with a dynamic
    batch as well, then run at the traced shape and at another one."""
    model = random_model(ffn, head)
    dims = {0: Dim("batch"), 1: Dim("sequence", max=MAX_LEN)}
    args = inputs(10, masked)
    with torch.no_grad():
        program = torch.export.export(model, args, dynamic_shapes=(dims,) * len(args))
    if ffn == "fff" and KERNEL:
        assert fff_ops(program.graph) == {"ultrafastbert.fff_infer.default"}
    exported = program.module()
    for length, seed, size in ((10, 1, 3), (19, 2, 2)):
        args = inputs(length, masked, seed=seed, size=size)
        with torch.no_grad():
            assert_close(exported(*args).logits, model(*args).logits)


def test_exported_length_is_bounded_by_max_positions():
    """An unbounded sequence Dim fails to export, suggesting ``max=max_position_embeddings``."""
    model = random_model("dense", "mlm")
    with pytest.raises(RuntimeError, match=rf"Suggested fixes:\n  sequence = Dim\('sequence', max={MAX_LEN}\)"):
        torch.export.export(model, inputs(10, masked=False), dynamic_shapes=({1: Dim("sequence")},))


def test_bad_ids_still_raise_in_eager_after_exporting():
    """The eager check is back once the trace is over; the exported graph refuses the id at the embedding."""
    model = random_model("fff", "mlm")
    input_ids, mask = random_batch(8)
    with torch.no_grad():
        program = torch.export.export(model, (input_ids, mask), dynamic_shapes=({1: Dim("sequence", max=MAX_LEN)},) * 2)
    input_ids[2, 5] = VOCAB
    with pytest.raises(ValueError, match=rf"input_ids must lie in \[0, {VOCAB}\).*got ids from \d+ to {VOCAB}"):
        model(input_ids, mask)
    with pytest.raises(IndexError), torch.no_grad():
        program.module()(input_ids, mask)


@pytest.mark.slow
@pytest.mark.parametrize("ffn", FFN_CONFIGS)
def test_inductor_matches_eager(ffn):
    """The default backend (Inductor, C++ code generation): masked classification at two lengths; an out-of-range
    id is refused by Inductor's bounds assert, and eager names it afterwards."""
    torch.compiler.reset()
    model = random_model(ffn, "classifier")
    compiled = torch.compile(model, fullgraph=True, dynamic=True)
    for length in (10, 17):
        args = inputs(length, masked=True)
        with torch.no_grad():
            assert_close(compiled(*args).logits, model(*args).logits)
    input_ids, mask = inputs(10, masked=True)
    input_ids[0, 3] = -1
    with pytest.raises(RuntimeError, match="index out of bounds"), torch.no_grad():
        compiled(input_ids, mask)
    with pytest.raises(ValueError, match=r"got ids from -1 to"):
        model(input_ids, mask)
