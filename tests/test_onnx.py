"""ONNX export with ``torch.onnx.export`` (the dynamo exporter), with nothing asked of the user: crammedBERT dense,
UltraFastBERT (FFF) and FFF-BERT models, loaded from saved folders, run by ONNX Runtime against eager PyTorch to
1e-4 at the traced shape and at another; the FFF's gather formulation for deep trees (``fff.onnx.gather_fff``)
against the reference on random shapes, dtypes, routing offsets and gradients. Trees of depth up to
``DENSE_MAX_DEPTH`` are exported as the reference itself; the tests export trees on both sides of it."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.export import Dim
from torch.testing import assert_close
from transformers import AutoModel, AutoModelForMaskedLM

from ultrafastbert import CrammedBertConfig, CrammedBertForMaskedLM, CrammedBertForSequenceClassification
from ultrafastbert.fff import FFF, fff_reference, kernels, visited_nodes_reference
from ultrafastbert.fff.onnx import DENSE_MAX_DEPTH, exporting_to_onnx, gather_fff
from ultrafastbert.model.fffbert import FFFBertConfig, FFFBertForMaskedLM

ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

VOCAB, MAX_LEN = 37, 24
PARITY = {"atol": 1e-4, "rtol": 1e-4}


def randomize(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """O(1) random weights and biases (the N(0, 0.02) init makes outputs nearly equal and FFF routes alike)."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if not name.endswith("scale_factor"):
                param.copy_(torch.randn_like(param) / max(param.shape[-1], 1) ** 0.5)
    return model.eval()


def crammed(ffn: str, head: type, **fields: object) -> torch.nn.Module:
    ffn_fields = (
        {"ffn_type": "dense", "intermediate_size": 22, "hidden_act": "gelu_glu"}
        if ffn == "dense"
        else {"ffn_type": "fff", "fff_trees": 2, "fff_depth": 3}
    )
    config = CrammedBertConfig(
        vocab_size=VOCAB,
        hidden_size=18,
        num_hidden_layers=2,
        num_attention_heads=3,
        max_position_embeddings=MAX_LEN,
        classifier_hidden_size=11,
        num_labels=3,
        **ffn_fields | fields,
    )
    return randomize(head(config))


def fffbert() -> torch.nn.Module:
    config = FFFBertConfig(
        vocab_size=VOCAB,
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=MAX_LEN,
        fff_trees=2,
        fff_depth=2,
    )
    return randomize(FFFBertForMaskedLM(config))


def batch(length: int, size: int, seed: int) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(0, VOCAB, (size, length), generator=generator)
    mask = torch.ones(size, length, dtype=torch.long)
    mask[-1, length // 2 :] = 0
    return {"input_ids": input_ids, "attention_mask": mask}


def export_and_compare(model: torch.nn.Module, tmp_path, grad: bool = True) -> set[str]:
    """Export ``model`` (batch and sequence dynamic; under autograd unless ``grad=False``), run the file in ONNX
    Runtime at two shapes and compare with eager; returns the ONNX operator domains of the graph."""
    dims = {0: Dim("batch"), 1: Dim("sequence", max=MAX_LEN)}
    inputs = batch(10, 3, seed=1)
    with torch.set_grad_enabled(grad):
        program = torch.onnx.export(
            model, (), kwargs=inputs, dynamo=True, dynamic_shapes={name: dims for name in inputs}, verbose=False
        )
    path = tmp_path / "model.onnx"
    program.save(str(path))
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    for length, size, seed in ((10, 3, 1), (19, 2, 2)):
        inputs = batch(length, size, seed)
        (got,) = session.run(None, {name: tensor.numpy() for name, tensor in inputs.items()})[:1]
        with torch.no_grad():
            want = model(**inputs).logits
        assert_close(torch.from_numpy(np.asarray(got)), want, **PARITY)
    return {node.domain for node in program.model_proto.graph.node}


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ---- the export formulation against the reference ------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(("tokens", "width", "depth", "trees"), [(1, 5, 0, 1), (7, 13, 1, 3), (33, 16, 4, 2)])
@pytest.mark.parametrize("offset", [False, True])
def test_gather_fff_matches_reference(dtype, tokens, width, depth, trees, offset):
    generator = torch.Generator().manual_seed(tokens + width + depth + trees)
    nodes = trees * (2 ** (depth + 1) - 1)
    x = torch.randn(tokens, width, generator=generator).to(dtype)
    weight_in = torch.randn(nodes, width, generator=generator).to(dtype)
    bias_in = torch.randn(nodes, generator=generator).to(dtype)
    weight_out = torch.randn(width, nodes, generator=generator).to(dtype)
    routing_offset = torch.randn(nodes, generator=generator) if offset else None
    out, visited = gather_fff(x, weight_in, bias_in, weight_out.t(), depth, trees, routing_offset)
    assert out.dtype == dtype and visited.shape == (tokens, trees, depth + 1)
    assert torch.equal(visited, visited_nodes_reference(x, weight_in, bias_in, depth, trees, routing_offset))
    assert_close(out, fff_reference(x, weight_in, bias_in, weight_out, depth, trees, routing_offset))


def test_gather_fff_gradients_match_reference():
    generator = torch.Generator().manual_seed(3)
    tensors = [torch.randn(*shape, generator=generator) for shape in ((9, 6), (14, 6), (14,), (6, 14))]
    grad_out = torch.randn(9, 6, generator=generator)
    grads = []
    for fff in (
        lambda x, w_in, b_in, w_out: gather_fff(x, w_in, b_in, w_out.t(), 2, 2)[0],
        lambda x, w_in, b_in, w_out: fff_reference(x, w_in, b_in, w_out, 2, 2),
    ):
        leaves = [t.clone().requires_grad_() for t in tensors]
        fff(*leaves).backward(grad_out)
        grads.append([leaf.grad for leaf in leaves])
    for got, want in zip(*grads, strict=True):
        assert_close(got, want)


@pytest.mark.parametrize("depth", [3, DENSE_MAX_DEPTH + 1])
def test_layer_takes_its_onnx_form_only_while_exporting_to_onnx(depth):
    """Eager and ``torch.export`` keep the compiled op; an ONNX export of the layer holds no custom operator: two
    matrix products for a shallow tree (dense masking), gathers and no matrix product for a deep one."""
    assert not exporting_to_onnx()
    layer = randomize(FFF(8, depth, trees=2))
    x = torch.randn(5, 8)
    with torch.no_grad():
        graph = torch.export.export(layer, (x,)).graph
        program = torch.onnx.export(layer, (x,), dynamo=True, verbose=False)
    if kernels.available():
        assert "ultrafastbert.fff_infer.default" in {str(node.target) for node in graph.nodes}
    assert {node.domain for node in program.model_proto.graph.node} == {""}
    operators = [node.op_type for node in program.model_proto.graph.node]
    products = sum(op in ("Gemm", "MatMul") for op in operators)
    assert (products, "Gather" in operators) == ((2, False) if depth <= DENSE_MAX_DEPTH else (0, True))
    session = ort.InferenceSession(program.model_proto.SerializeToString(), providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    assert_close(torch.from_numpy(got), layer(x).detach(), **PARITY)
    assert layer.impl == "auto" and not exporting_to_onnx()


@pytest.mark.slow
@pytest.mark.parametrize("depth", [3, DENSE_MAX_DEPTH + 1])
def test_balancing_layer_exports_with_its_routing_offsets(depth):
    layer = randomize(FFF(8, depth, trees=2, balance_rate=0.01))
    layer.routing_offset.copy_(torch.randn(layer.routing_offset.shape))
    x = torch.randn(40, 8)
    program = torch.onnx.export(layer, (x,), dynamo=True, verbose=False)
    session = ort.InferenceSession(program.model_proto.SerializeToString(), providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    with torch.no_grad():
        assert_close(torch.from_numpy(got), layer(x), **PARITY)
        assert_close(layer(x), fff_reference(x, *layer._parameter_tensors(), depth, 2, layer.routing_offset))


# ---- whole models, as a user exports them ----------------------------------------------------------------------


def test_ultrafastbert_folder_exports_without_user_action(tmp_path):
    """The acceptance case: a saved UltraFastBERT folder (trees deep enough to be exported as gathers), loaded by
    the Auto class, exported under autograd (the exporter's default) with its FFF layers on ``impl="auto"``;
    nothing else is called."""
    crammed("fff", CrammedBertForMaskedLM, fff_depth=DENSE_MAX_DEPTH + 1).save_pretrained(tmp_path / "folder")
    model = AutoModelForMaskedLM.from_pretrained(tmp_path / "folder").eval()
    assert export_and_compare(model, tmp_path) == {""}
    assert model.config.fff_impl == "auto"


@pytest.mark.slow
def test_fffbert_exports(tmp_path):
    fffbert().save_pretrained(tmp_path / "folder")
    model = AutoModelForMaskedLM.from_pretrained(tmp_path / "folder").eval()
    assert export_and_compare(model, tmp_path, grad=False) == {""}


@pytest.mark.slow
@pytest.mark.parametrize(
    ("ffn", "head"),
    [
        ("dense", CrammedBertForMaskedLM),
        ("dense", CrammedBertForSequenceClassification),
        ("fff", CrammedBertForSequenceClassification),
    ],  # fmt: skip
)
def test_crammed_models_export(tmp_path, ffn, head):
    assert export_and_compare(crammed(ffn, head), tmp_path, grad=False) == {""}


@pytest.mark.slow
def test_bare_encoder_exports(tmp_path):
    crammed("fff", CrammedBertForMaskedLM).save_pretrained(tmp_path / "folder")
    model = AutoModel.from_pretrained(tmp_path / "folder").eval()
    inputs = batch(12, 2, seed=4)
    program = torch.onnx.export(model, (), kwargs=inputs, dynamo=True, verbose=False)
    session = ort.InferenceSession(program.model_proto.SerializeToString(), providers=["CPUExecutionProvider"])
    got = session.run(None, {name: tensor.numpy() for name, tensor in inputs.items()})[0]
    with torch.no_grad():
        assert_close(torch.from_numpy(got), model(**inputs).last_hidden_state, **PARITY)
