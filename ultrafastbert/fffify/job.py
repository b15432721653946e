"""``ultrafastbert fffify``: a trained BERT folder in, an FFF-BERT folder out (``docs/fffify.md``).

Order of work: every check that can fail on the user's input runs first (the source's ``config.json``, the tree
shape, the output folder, the tokenizer, the text), then the dense model runs once over the text to capture each
layer's feedforward inputs and outputs, each FFF is initialised and distilled on its layer, optionally all are
distilled end to end, the fidelity is measured on held-out text, and the folder is built beside ``--output`` and
renamed into place. ``fffify.json`` in the folder records the settings, per-layer R^2 and embedding fidelity.
"""

from __future__ import annotations

import json
import random
import shutil
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from ..cache import cache_root
from ..data.corpus import Corpus, corpus_from_paths
from ..model import load_tokenizer
from ..train.jobs import check_output_folder
from ..train.run_folder import publish_folder, run_folder_lock, staging_folder
from .config import FffifyConfig
from .distill import (
    Batches,
    capture,
    distill_end_to_end,
    distill_layer,
    hidden_state_distance,
    layer_r_squared,
    mean_pooled,
    texts_for_tokens,
    tokenize,
)
from .grouped import convert_layer
from .init import initialise
from .source import check_source, conversion_shape, converted_skeleton, ff_modules, load_source, sequence_length

RECORD = "fffify.json"
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.txt",
    "added_tokens.json",
)


def conversion_texts(config: FffifyConfig, cache_dir: str | Path | None) -> tuple[list[str], list[str]]:
    """(distillation texts, held-out texts), each shuffled with ``config.seed``: the ``--corpus`` files split by
    ``validation_fraction``, or the embedded corpus's own train/validation split."""
    cache = Path(cache_dir) if cache_dir else cache_root()
    if config.corpus:
        corpus: Corpus = corpus_from_paths(config.corpus, cache, validation_fraction=config.validation_fraction)
    else:
        from ..data import prepare_default_data

        corpus = prepare_default_data(cache).corpus
    splits = []
    for split in ("train", "validation"):
        texts = [text for text in corpus.documents(split) if text.strip()]
        random.Random(config.seed).shuffle(texts)
        splits.append(texts)
    if not splits[0] or not splits[1]:
        raise ValueError(
            f"the text has {len(splits[0])} training and {len(splits[1])} held-out documents; both must be non-empty "
            "(give more documents, or a larger --validation-fraction)"
        )
    return splits[0], splits[1]


# The settings that decide the conversion text and what the dense model computes on it
TEXT_SETTINGS = (
    "seq_len",
    "train_tokens",
    "heldout_tokens",
    "heldout_sentences",
    "seed",
    "corpus",
    "validation_fraction",
)


@dataclass
class ConversionData:
    """What the dense model computes once over the conversion text: tokenised distillation, held-out and sentence
    texts, each layer's feedforward (input, output) pairs, and the held-out sentences' normalised embeddings.
    Several conversions of one model with the same text settings can share it (``fffify_job(data=...)``)."""

    model_dir: str
    text: dict[str, Any]  # the config's TEXT_SETTINGS it was made with
    dense: torch.nn.Module
    train: Batches
    heldout: Batches
    sentences: Batches
    train_pairs: list[tuple[torch.Tensor, torch.Tensor]]
    heldout_pairs: list[tuple[torch.Tensor, torch.Tensor]]
    dense_embeddings: torch.Tensor
    seconds: float

    def check(self, model_dir: str | Path, config: FffifyConfig) -> None:
        """``ValueError`` unless this data was made from ``model_dir`` with ``config``'s text settings."""
        wanted = {name: getattr(config, name) for name in TEXT_SETTINGS}
        if str(model_dir) != self.model_dir or wanted != self.text:
            raise ValueError(
                f"the shared conversion data was made from {self.model_dir} with {self.text}, not {wanted}"
            )


def conversion_data(
    model_dir: str | Path,
    source: dict[str, Any],
    tokenizer: Any,
    texts: tuple[list[str], list[str]],
    config: FffifyConfig,
) -> ConversionData:
    """Run the dense model of ``model_dir`` once over the conversion text (``config.seq_len`` already resolved)."""
    clock = time.monotonic()
    train_texts, heldout_texts = texts
    dense = load_source(model_dir, source)
    train = tokenize(
        tokenizer, texts_for_tokens(tokenizer, train_texts, config.train_tokens, config.seq_len), config.seq_len
    )
    heldout = tokenize(
        tokenizer, texts_for_tokens(tokenizer, heldout_texts, config.heldout_tokens, config.seq_len), config.seq_len
    )
    sentences = tokenize(tokenizer, heldout_texts[: config.heldout_sentences], config.seq_len)
    return ConversionData(
        model_dir=str(model_dir),
        text={name: getattr(config, name) for name in TEXT_SETTINGS},
        dense=dense,
        train=train,
        heldout=heldout,
        sentences=sentences,
        train_pairs=capture(dense, train),
        heldout_pairs=capture(dense, heldout),
        dense_embeddings=F.normalize(mean_pooled(dense, sentences), dim=1),
        seconds=round(time.monotonic() - clock, 1),
    )


def prepare_conversion(
    model_dir: str | Path, config: FffifyConfig, cache_dir: str | Path | None = None
) -> ConversionData:
    """``ConversionData`` for conversions of ``model_dir`` with ``config``'s text settings (checked first)."""
    source = check_source(model_dir, config)
    config = replace(config, seq_len=sequence_length(source, config))
    texts = conversion_texts(config, cache_dir)
    return conversion_data(model_dir, source, load_tokenizer(model_dir), texts, config)


def fffify_job(
    model_dir: str | Path,
    output_dir: str | Path,
    config: FffifyConfig,
    overwrite: bool = False,
    cache_dir: str | Path | None = None,
    show_progress: bool = True,
    data: ConversionData | None = None,
) -> dict[str, Any]:
    """Convert the BERT in ``model_dir`` and save the FFF-BERT in ``output_dir``; returns the ``fffify.json``
    record. ``ConversionError``/``ValueError``/``OSError`` name bad input before any work. ``output_dir`` is locked
    while the job runs: a second job into it is refused (``RunFolderError`` naming this one's pid). ``data``
    (``prepare_conversion``) spares the dense model's pass over the text when several conversions share it."""
    started = time.monotonic()
    source = check_source(model_dir, config)
    config = replace(config, seq_len=sequence_length(source, config))
    if data is not None:
        data.check(model_dir, config)
    check_output_folder(output_dir, model_dir, overwrite, flag="--output")
    with run_folder_lock(output_dir):
        return _fffify_job(model_dir, output_dir, config, source, overwrite, cache_dir, show_progress, started, data)


def _fffify_job(
    model_dir: str | Path,
    output_dir: str | Path,
    config: FffifyConfig,
    source: dict[str, Any],
    overwrite: bool,
    cache_dir: str | Path | None,
    show_progress: bool,
    started: float,
    data: ConversionData | None,
) -> dict[str, Any]:
    check_output_folder(output_dir, model_dir, overwrite, flag="--output")  # again, now that it is ours
    if data is None:
        tokenizer = load_tokenizer(model_dir)
        texts = conversion_texts(config, cache_dir)
    staging = staging_folder(output_dir)  # the check that the output can be written, before the work
    try:
        if data is None:
            data = conversion_data(model_dir, source, tokenizer, texts, config)
        record = _convert(model_dir, source, data, config, staging, show_progress)
        record["seconds"]["total"] = round(time.monotonic() - started, 1)
        (staging / RECORD).write_text(json.dumps(record, indent=2) + "\n")
        publish_folder(staging, output_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return record


def _convert(
    model_dir: str | Path,
    source: dict[str, Any],
    data: ConversionData,
    config: FffifyConfig,
    staging: Path,
    show_progress: bool,
) -> dict[str, Any]:
    torch.manual_seed(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    seconds: dict[str, float] = {"capture": data.seconds}  # the dense model's pass (shared: counted once per use)
    dense, train, heldout, sentences = data.dense, data.train, data.heldout, data.sentences
    train_pairs, heldout_pairs = data.train_pairs, data.heldout_pairs
    model = converted_skeleton(dense, source, config)

    layers = ff_modules(model)
    budget = None if config.budget_minutes is None else 60.0 * config.budget_minutes
    layer_budget = None if budget is None else budget * (2 / 3 if config.e2e_steps else 1.0) / len(layers)
    distill_started = time.monotonic()
    if config.method == "grouped":
        per_layer = grouped_layers(layers, ff_modules(dense), train_pairs, heldout_pairs, generator)
    else:
        per_layer = []
        for index, (layer, (X, Y), (Xh, Yh)) in enumerate(zip(layers, train_pairs, heldout_pairs, strict=True)):
            fff, bias = layer.intermediate.fff, layer.output.bias
            clock = time.monotonic()
            initialise(fff, bias, X, Y, config.init, config.ridge, config.init_tokens, generator)
            init_seconds = time.monotonic() - clock
            entry = {"layer": index, "r2_init_heldout": layer_r_squared(fff, bias, Xh, Yh)}
            clock = time.monotonic()
            deadline = None if layer_budget is None else clock + layer_budget
            entry["steps"] = distill_layer(
                fff,
                bias,
                X,
                Y,
                config.layer_steps,
                config.lr,
                config.batch_tokens,
                generator,
                deadline,
                description=f"layer {index}",
                show_progress=show_progress,
            )
            entry["r2_heldout"] = layer_r_squared(fff, bias, Xh, Yh)
            entry["r2_train"] = layer_r_squared(fff, bias, X[:16384], Y[:16384])
            entry["init_seconds"] = round(init_seconds, 1)
            entry["distill_seconds"] = round(time.monotonic() - clock, 1)
            per_layer.append(entry)
    seconds["layers"] = round(time.monotonic() - distill_started, 1)

    end_to_end = None
    if config.e2e_steps:
        clock = time.monotonic()
        distance_before = hidden_state_distance(model, dense, heldout)
        deadline = None if budget is None else distill_started + budget
        losses: list[float] = []
        steps = distill_end_to_end(
            model,
            dense,
            train,
            config.e2e_steps,
            config.e2e_lr,
            config.e2e_batch,
            generator,
            deadline,
            show_progress,
            on_step=lambda _step, loss: losses.append(loss),
        )
        distance_after = hidden_state_distance(model, dense, heldout)
        seconds["end_to_end"] = round(time.monotonic() - clock, 1)
        for entry, layer, (Xh, Yh) in zip(per_layer, layers, heldout_pairs, strict=True):
            entry["r2_heldout_after_e2e"] = layer_r_squared(layer.intermediate.fff, layer.output.bias, Xh, Yh)
        end_to_end = {
            "steps": steps,
            "first_loss": losses[0],
            "last_loss": losses[-1],
            # the same objective on the held-out texts, before and after: the distance the stage closed there
            "heldout_distance_before": distance_before,
            "heldout_distance_after": distance_after,
        }

    clock = time.monotonic()
    fidelity = embedding_fidelity(dense, model, sentences, data.dense_embeddings)
    seconds["fidelity"] = round(time.monotonic() - clock, 1)
    model.save_pretrained(staging)
    grouped = conversion_shape(source, config) if config.method == "grouped" else None
    for name in TOKENIZER_FILES:  # the original tokenizer, file for file
        if (Path(model_dir) / name).is_file():
            shutil.copy2(Path(model_dir) / name, staging / name)
    return {
        "source": str(model_dir),
        "architecture": type(model).__name__,
        "shape": config.shape if grouped is None else grouped.name,
        "neurons_per_token": config.trees * (config.depth + 1) if grouped is None else grouped.neurons_per_token,
        "grouped": None if grouped is None else asdict(grouped) | {"active_fraction": grouped.active_fraction},
        "dense_width": source["intermediate_size"],
        "config": asdict(config),
        "text": {"train_tokens": train.tokens, "heldout_tokens": heldout.tokens, "heldout_sentences": len(sentences)},
        "layers": per_layer,
        "end_to_end": end_to_end,
        "embedding": fidelity,
        "seconds": seconds,
    }


def grouped_layers(
    layers: list[torch.nn.Module],
    dense_layers: list[torch.nn.Module],
    train_pairs: list[tuple[torch.Tensor, torch.Tensor]],
    heldout_pairs: list[tuple[torch.Tensor, torch.Tensor]],
    generator: torch.Generator,
) -> list[dict[str, Any]]:
    """``--method grouped``: each layer's grouped FFF built from its dense layer (``grouped.convert_layer``); per
    layer, held-out and training R^2 and what the conversion measured (no distillation steps)."""
    per_layer = []
    for index, (layer, dense_layer, (X, Y), (Xh, Yh)) in enumerate(
        zip(layers, dense_layers, train_pairs, heldout_pairs, strict=True)
    ):
        clock = time.monotonic()
        fff, bias = layer.intermediate.fff, layer.output.bias
        stats = convert_layer(fff, bias, dense_layer, X, Y, generator)
        r2 = layer_r_squared(fff, bias, Xh, Yh)
        per_layer.append(
            {
                "layer": index,
                "r2_init_heldout": r2,
                "r2_heldout": r2,
                "r2_train": layer_r_squared(fff, bias, X[:16384], Y[:16384]),
                "steps": 0,
                "grouped": asdict(stats),
                "init_seconds": round(time.monotonic() - clock, 1),
            }
        )
    return per_layer


# Below this mean sentence-embedding cosine a conversion is called far from its dense model: the report of record's
# conversions of all-MiniLM-L6-v2 measured 0.65-0.76 and kept at most 14% of the dense model's finetuning gain.
CLOSE_COSINE = 0.9


def report_lines(record: dict[str, Any], output: str | Path) -> list[str]:
    """What ``fffify`` prints: the numbers, what the time budget cut short (if anything), and a verdict."""
    config, layers, embedding = record["config"], record["layers"], record["embedding"]
    r2 = [layer.get("r2_heldout_after_e2e", layer["r2_heldout"]) for layer in layers]
    neighbours = (
        f", nearest neighbour the same for {100 * embedding['nn_top1_agreement']:.0f}% of held-out texts"
        if "nn_top1_agreement" in embedding
        else ""
    )
    lines = [
        f"{record['architecture']} {record['shape']} saved to {output} in {record['seconds']['total']:.0f} s: "
        f"held-out FF R^2 per layer {' '.join(f'{value:.3f}' for value in r2)}; sentence-embedding cosine to the "
        f"dense model {embedding['cosine_mean']:.3f} (mean){neighbours}"
    ]
    cut = [
        f"layer {layer['layer']} ({layer['steps']}/{config['layer_steps']} steps)"
        for layer in layers
        if layer["steps"] < config["layer_steps"] and config.get("method", "tree") == "tree"
    ]
    if record["end_to_end"] is not None and record["end_to_end"]["steps"] < config["e2e_steps"]:
        cut.append(f"end-to-end distillation ({record['end_to_end']['steps']}/{config['e2e_steps']} steps)")
    if cut:
        lines.append(
            f"the time budget (--budget-minutes {config['budget_minutes']:g}) cut short: {', '.join(cut)}; a larger "
            "budget lets them finish"
        )
    if embedding["cosine_mean"] >= CLOSE_COSINE:
        verdict = (
            f"close to the dense model (embedding cosine >= {CLOSE_COSINE}); finetune and compare the two on your "
            "task before relying on it"
        )
    else:
        verdict = (
            f"far from the dense model (embedding cosine below {CLOSE_COSINE}; conversions of all-MiniLM-L6-v2 at "
            "0.65-0.76 kept at most 14% of its finetuning gain): not a drop-in replacement; finetune it and "
            "compare with the dense model on your task"
        )
    lines.append(f"verdict: {verdict}")
    return lines


def embedding_fidelity(
    dense: torch.nn.Module, converted: torch.nn.Module, sentences: Batches, reference: torch.Tensor | None = None
) -> dict[str, float]:
    """How close the converted model's mean-pooled sentence embeddings are to the dense model's on held-out texts:
    the cosine of each pair (mean, median, 5th percentile), and how often nearest-neighbour retrieval over the
    held-out set (cosine, the query itself excluded) returns the same text (top-1, and overlap of the top 10).
    ``reference``: the dense model's normalised embeddings of ``sentences``, when already computed."""
    if reference is None:
        reference = F.normalize(mean_pooled(dense, sentences), dim=1)
    ours = F.normalize(mean_pooled(converted, sentences), dim=1)
    cosine = (reference * ours).sum(1)
    result = {
        "cosine_mean": float(cosine.mean()),
        "cosine_median": float(cosine.median()),
        "cosine_p05": float(torch.quantile(cosine, 0.05)),
        "sentences": len(sentences),
    }
    if len(sentences) > 10:
        neighbours = []
        for embedding in (reference, ours):
            similarity = embedding @ embedding.T
            similarity.fill_diagonal_(-2.0)
            neighbours.append(similarity.topk(10, dim=1).indices)
        result["nn_top1_agreement"] = float((neighbours[0][:, 0] == neighbours[1][:, 0]).float().mean())
        overlap = [len(set(a.tolist()) & set(b.tolist())) / 10 for a, b in zip(*neighbours, strict=True)]
        result["nn_top10_overlap"] = sum(overlap) / len(overlap)
    return result
