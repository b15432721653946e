"""ONNX Runtime against PyTorch: ``python benchmarks/onnx_speed.py [--presets ufb-1x11 crammed-bert] [--batch 1]
[--seq-len 128] [--threads 1] [--rounds 20] [--depths 2 4 6 8 11]``.

Whole models: each preset (random weights; node biases drawn so that tokens spread over the trees) is exported with
``torch.onnx.export`` as a user would (nothing called first), checked against eager PyTorch, then timed in
interleaved rounds (``bench.timing``) beside PyTorch eager, whose FFF layers run the compiled kernel.
The FFF layer alone (one layer of the first FFF preset, on ``batch * seq_len`` tokens): the kernel in PyTorch
against ONNX Runtime running the layer's export (``fff.onnx.onnx_fff``) and the gather forms ``gather_fff`` was
chosen from, all in one set of interleaved rounds. Then, per depth of ``--depths``, a one-tree layer of the first
preset's width: the kernel against ONNX Runtime running the dense masking form and ``gather_fff`` (where
``fff.onnx.DENSE_MAX_DEPTH`` comes from). Writes ``benchmarks/results/onnx.json``.
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import warnings
from pathlib import Path

import numpy as np
import onnxruntime
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ultrafastbert import CrammedBertConfig, CrammedBertModel
from ultrafastbert.bench.timing import Rounds, TimedCall, machine_info, time_interleaved
from ultrafastbert.fff import FFF, walk_forward
from ultrafastbert.fff.onnx import gather_fff

RESULTS = Path(__file__).parent / "results" / "onnx.json"


class Formulation(nn.Module):
    """One alternative ONNX form of a single-tree FFF layer's inference (the layer's own weights):
    ``per-level-gather`` gathers and sums the output rows at every level, ``per-level-matmul`` multiplies the
    gathered rows with batched matmuls, ``einsum-walk`` is ``sparse.walk_forward``; ``gather_fff`` is the export
    formulation of deep trees, taken here at any depth."""

    def __init__(self, layer: FFF, kind: str) -> None:
        super().__init__()
        self.layer, self.kind = layer, kind
        self.weight_out_t = nn.Parameter(layer.linear_out.weight.t().contiguous(), requires_grad=False)

    def forward(self, x: Tensor) -> Tensor:
        weight_in, bias_in, depth = self.layer.linear_in.weight, self.layer.linear_in.bias, self.layer.depth
        if self.kind == "einsum-walk":
            return walk_forward(x, weight_in, bias_in, self.weight_out_t, depth, 1)[0]
        if self.kind == "gather_fff":  # at any depth (the layer's export takes it from DENSE_MAX_DEPTH + 1 on)
            return gather_fff(x, weight_in, bias_in, self.weight_out_t, depth, 1)[0]
        node = torch.zeros(x.shape[0], 1, dtype=torch.long)  # (N, 1)
        out = torch.zeros_like(x)
        for _ in range(depth + 1):
            if self.kind == "per-level-gather":
                logits = (F.embedding(node, weight_in) * x[:, None, :]).sum(-1) + bias_in[node]
                out = out + (F.gelu(logits)[..., None] * F.embedding(node, self.weight_out_t)).sum(1)
            else:
                logits = torch.matmul(weight_in[node], x[:, :, None]).squeeze(-1) + bias_in[node]
                out = out + torch.matmul(F.gelu(logits)[:, None, :], self.weight_out_t[node]).squeeze(1)
            node = 2 * node + 1 + (logits > 0).long()
        return out


def session(module: nn.Module, args: tuple[Tensor, ...], threads: int) -> onnxruntime.InferenceSession:
    """``module`` exported to ONNX and loaded into an ONNX Runtime CPU session of ``threads`` threads."""
    with tempfile.TemporaryDirectory() as folder, torch.no_grad():
        path = Path(folder) / "model.onnx"
        torch.onnx.export(module, args, dynamo=True, verbose=False).save(str(path))
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def compare(
    modules: dict[str, nn.Module],
    args: tuple[Tensor, ...],
    threads: int,
    rounds: Rounds,
    eager: nn.Module | None = None,
) -> dict:
    """PyTorch eager on ``eager`` (default: the first of ``modules``) and ONNX Runtime on each of ``modules``, timed
    together: median and min ms, each runtime's largest difference from eager and its median over PyTorch's."""
    first = next(iter(modules.values())) if eager is None else eager
    with torch.no_grad():
        eager = first(*args)
    eager = (eager if isinstance(eager, Tensor) else eager.last_hidden_state).numpy()
    calls = [TimedCall("pytorch", lambda: first(*args))]
    differences = {}
    for name, module in modules.items():
        runtime = session(module, args, threads)
        feeds = {given.name: tensor.numpy() for given, tensor in zip(runtime.get_inputs(), args, strict=True)}
        differences[f"onnxruntime {name}".strip()] = float(np.abs(runtime.run(None, feeds)[0] - eager).max())
        calls.append(
            TimedCall(f"onnxruntime {name}".strip(), lambda runtime=runtime, feeds=feeds: runtime.run(None, feeds))
        )
    with torch.no_grad():
        timings = time_interleaved(calls, rounds)
    pytorch = timings["pytorch"].median_s
    return {
        name: {
            "median_ms": timing.median_s * 1e3,
            "min_ms": timing.min_s * 1e3,
            "over_pytorch": timing.median_s / pytorch,
            "max_abs_difference": differences.get(name, 0.0),
        }
        for name, timing in timings.items()
    } | {"rounds": timings["pytorch"].repeats}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--presets", nargs="+", default=["ufb-1x11", "crammed-bert"])
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--depths", type=int, nargs="*", default=[2, 4, 6, 8, 11])
    parser.add_argument("--output", type=Path, default=RESULTS)
    options = parser.parse_args()
    warnings.filterwarnings("ignore")
    logging.disable(logging.WARNING)
    torch.set_num_threads(options.threads)
    rounds = Rounds(repeats=options.rounds)
    torch.manual_seed(0)
    input_ids = torch.randint(0, 1000, (options.batch, options.seq_len))
    mask = torch.ones_like(input_ids)
    report: dict = {"machine": machine_info(), "onnxruntime": onnxruntime.__version__, "batch": options.batch,
                    "seq_len": options.seq_len, "models": {}, "fff_layer": None, "depths": {}}  # fmt: skip
    for preset in options.presets:
        model = CrammedBertModel(CrammedBertConfig.from_preset(preset, vocab_size=1000)).eval()
        layers = [module for module in model.modules() if isinstance(module, FFF)]
        with torch.no_grad():
            for layer in layers:
                layer.linear_in.bias.normal_()  # at the N(0, 0.02) init nearly every token takes one path
        report["models"][preset] = compare({"": model}, (input_ids, mask), options.threads, rounds)
        print(preset, json.dumps(report["models"][preset]), flush=True)
        if layers and report["fff_layer"] is None:
            layer = layers[0]
            x = torch.randn(options.batch * options.seq_len, layer.width)
            modules = {"layer export (onnx_fff)": layer}
            if layer.trees == 1:
                kinds = ("per-level-gather", "per-level-matmul", "einsum-walk")
                modules |= {kind: Formulation(layer, kind) for kind in kinds}
                modules["dense masking reference"] = FFF(layer.width, layer.depth, impl="reference").eval()
                modules["dense masking reference"].load_state_dict(layer.state_dict())
            report["fff_layer"] = {"layer": layer.extra_repr(), **compare(modules, (x,), options.threads, rounds)}
            print("FFF layer", json.dumps(report["fff_layer"]), flush=True)
            for depth in options.depths:
                torch.manual_seed(depth)
                deep = FFF(layer.width, depth).eval()
                with torch.no_grad():
                    deep.linear_in.bias.normal_()
                dense = FFF(layer.width, depth, impl="reference").eval()
                dense.load_state_dict(deep.state_dict())
                forms = {"gather_fff": Formulation(deep, "gather_fff"), "dense masking": dense}
                report["depths"][depth] = compare(forms, (x,), options.threads, rounds, eager=deep)
                print("depth", depth, json.dumps(report["depths"][depth]), flush=True)
    options.output.parent.mkdir(parents=True, exist_ok=True)
    options.output.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
