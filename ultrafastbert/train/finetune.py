"""Finetuning and evaluation of sequence classifiers (GLUE and the local tasks), several seeds, median reported.

Defaults are the crammedBERT GLUE recipe (``docs/design.md``): lr 4e-5, batch 16, 5 epochs, cosine schedule
with 10% warm-up, no weight decay; examples are truncated to the model's own sequence length.
``max_train_examples``/``max_eval_examples`` cap the data for runs on a time budget; the caps and the sizes
actually used are recorded with the results.
"""

from __future__ import annotations

import json
import math
import os
import random
import statistics
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader
from transformers import get_cosine_schedule_with_warmup
from transformers.utils import logging as hf_logging

from ..data.metrics import compute_metrics
from ..data.tasks import Example, TaskCollator, TaskData
from ..model import AutoConfig, AutoModelForSequenceClassification
from ..progress import progress, status
from .config import FinetuneConfig
from .optim import build_adamw

__all__ = [
    "FinetuneConfig",
    "SeedResult",
    "TaskResult",
    "capped",
    "evaluate",
    "finetune_seed",
    "finetune_task",
    "majority_baseline",
    "ordered_splits",
    "predict",
    "results_table",
    "train_classifier",
    "write_results",
]


@dataclass
class SeedResult:
    seed: int
    metrics: dict[str, dict[str, float]]  # split -> metric -> value
    train_examples: int
    train_seconds: float
    final_train_loss: float
    kept_step: int | None = None  # the optimizer step whose weights were scored (select="best": the best epoch's)
    steps: int | None = None  # optimizer steps run (fewer than planned after an early stop)


@dataclass
class TaskResult:
    """One task over several seeds: per-seed metrics and the median of each (split, metric)."""

    task: str
    main_metric: str
    seeds: list[SeedResult]
    median: dict[str, dict[str, float]] = field(default_factory=dict)
    eval_examples: dict[str, int] = field(default_factory=dict)
    kept_seed: int | None = None  # the seed whose model was saved (best validation main metric)

    def __post_init__(self) -> None:
        if not self.median and self.seeds:
            splits = self.seeds[0].metrics
            self.median = {
                split: {name: statistics.median(s.metrics[split][name] for s in self.seeds) for name in metrics}
                for split, metrics in splits.items()
            }


DROPOUT_FIELDS = ("embedding_dropout_prob", "hidden_dropout_prob", "attention_probs_dropout_prob", "classifier_dropout")


def _load_classifier(model_dir: str | Path, task: TaskData, config: FinetuneConfig) -> nn.Module:
    """The model family's sequence classifier (crammedBERT, FFF-BERT or BERT, by ``config.json``) on the encoder in
    ``model_dir``, with a fresh head for ``task`` and ``config.dropout`` in every dropout the family has."""
    model_config = AutoConfig.from_pretrained(model_dir)
    dropout = {name: config.dropout for name in DROPOUT_FIELDS if hasattr(model_config, name)}
    labels = (
        {"id2label": dict(enumerate(task.label_names)), "label2id": {n: i for i, n in enumerate(task.label_names)}}
        if task.label_names
        else {}
    )
    problem_type = "regression" if task.is_regression else "single_label_classification"
    # the pooler and head are new by design: silence transformers' report of them as missing (our own loader
    # still raises on a checkpoint that lacks encoder weights or does not fit)
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        return AutoModelForSequenceClassification.from_pretrained(
            model_dir, num_labels=task.num_labels, problem_type=problem_type, **labels, **dropout
        )
    finally:
        hf_logging.set_verbosity(verbosity)


def task_collator(tokenizer: Any, model_config: Any, config: FinetuneConfig, task: TaskData) -> TaskCollator:
    """The collator of ``task`` for a model of ``model_config``: ``config``'s tokens per example, and segment ids
    for pairs where the model has a segment embedding (BERT's ``type_vocab_size``; crammedBERT has none)."""
    token_types = getattr(model_config, "type_vocab_size", 0) > 1
    return TaskCollator(tokenizer, config.max_length_for(model_config), task.is_regression, token_types)


def majority_baseline(task: TaskData, split: str, config: FinetuneConfig) -> float:
    """The main metric of always answering the (capped) training set's most frequent label: what a model that
    learned nothing scores. 0 for regression (a constant prediction has no correlation with the labels)."""
    if task.is_regression:
        return 0.0
    train = capped(task.train, config.max_train_examples)
    evaluation = capped(task.evaluation_splits()[split], config.max_eval_examples)
    majority = Counter(example.label for example in train).most_common(1)[0][0]
    labels = np.array([example.label for example in evaluation])
    return compute_metrics(task.metric_names[:1], np.full_like(labels, majority), labels)[task.metric_names[0]]


def capped(examples: list[Example], limit: int | None, seed: int = 0) -> list[Example]:
    """At most ``limit`` examples, drawn uniformly with a fixed seed (task files are often sorted by label, so
    the first ``limit`` would be a biased sample); the same subset for every finetuning seed."""
    if not limit or len(examples) <= limit:
        return examples
    chosen = sorted(random.Random(seed).sample(range(len(examples)), limit))
    return [examples[index] for index in chosen]


@torch.no_grad()
def predict(model: nn.Module, examples: list[Example], collator: TaskCollator, batch_size: int) -> torch.Tensor:
    """Logits ``(N, C)`` (or scores ``(N, 1)``) in eval mode: FFF layers take the conditional inference path."""
    model.eval()
    outputs = []
    for start in range(0, len(examples), batch_size):
        batch = collator(examples[start : start + batch_size])
        batch.pop("labels")
        outputs.append(model(**batch).logits.float())
    return torch.cat(outputs) if outputs else torch.empty(0, 1)


def evaluate(
    model: nn.Module, task: TaskData, collator: TaskCollator, batch_size: int, max_examples: int | None = None
) -> dict[str, dict[str, float]]:
    """Every labelled evaluation split of ``task`` scored with the task's metrics."""
    results = {}
    for split, examples in task.evaluation_splits().items():
        examples = capped(examples, max_examples)
        logits = predict(model, examples, collator, batch_size)
        labels = torch.tensor([example.label for example in examples])
        results[split] = compute_metrics(task.metric_names, logits, labels)
    return results


def train_classifier(
    model_dir: str | Path, task: TaskData, tokenizer: Any, config: FinetuneConfig, seed: int, show_progress: bool = True
) -> tuple[nn.Module, SeedResult]:
    """Finetune the pretrained model in ``model_dir`` on ``task`` with one seed; return the model (in eval mode,
    holding the weights ``config.select`` keeps) and its scores on every labelled evaluation split.

    With ``select="best"`` the validation split is scored after every epoch (and at the end) and the weights of
    the best main metric are kept; ``early_stopping_patience`` ends the run after that many epochs without
    improvement. With ``select="last"`` nothing is scored before the end."""
    torch.manual_seed(seed)
    model = _load_classifier(model_dir, task, config)
    collator = task_collator(tokenizer, model.config, config, task)
    train = capped(task.train, config.max_train_examples)
    if not train:
        raise ValueError(f"task {task.name!r} has no training examples")
    loader = DataLoader(
        train,
        batch_size=config.batch_size,
        shuffle=True,
        collate_fn=collator,
        generator=torch.Generator().manual_seed(seed),
    )
    total_steps = max(1, math.ceil(len(loader) * config.epochs))
    optimizer = build_adamw(model, config.lr, weight_decay=config.weight_decay)
    scheduler = get_cosine_schedule_with_warmup(optimizer, int(config.warmup_fraction * total_steps), total_steps)
    started, step, loss_value = time.perf_counter(), 0, float("nan")
    validation = capped(task.validation, config.max_eval_examples)
    best: tuple[float, int, dict[str, torch.Tensor]] | None = None  # (score, step, weights)
    stale_epochs = 0

    epochs = math.ceil(config.epochs)

    def checkpoint(epoch: int) -> bool:
        """Score the validation split, keep the weights if best; ``True`` when early stopping says stop."""
        nonlocal best, stale_epochs
        logits = predict(model, validation, collator, config.eval_batch_size)
        labels = torch.tensor([example.label for example in validation])
        score = compute_metrics(task.metric_names[:1], logits, labels)[task.metric_names[0]]
        model.train()
        improved = best is None or score > best[0]  # NaN (a constant prediction's correlation) never counts as better
        if show_progress:
            status(
                f"{task.name} seed {seed} epoch {epoch}/{epochs}: train loss {loss_value:.4f}, validation "
                f"{task.metric_names[0]} {100 * score:.1f}{' (best so far)' if improved else ''}"
            )
        if improved:
            best = (score, step, {name: value.detach().clone() for name, value in model.state_dict().items()})
            stale_epochs = 0
            return False
        stale_epochs += 1
        return config.early_stopping_patience is not None and stale_epochs >= config.early_stopping_patience

    bar = progress(total_steps, f"{task.name} seed {seed}", enabled=show_progress)
    model.train()
    stopped, epoch = False, 0
    while step < total_steps and not stopped:
        epoch += 1
        for batch in loader:
            loss = model(**batch).loss
            loss.backward()
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            loss_value = loss.item()
            bar.update(1)
            bar.set_postfix(loss=f"{loss_value:.3f}")
            if step >= total_steps:
                break
        if config.select == "best" and step < total_steps:
            stopped = checkpoint(epoch)
    bar.close()
    kept_step = step
    if config.select == "best":
        if not stopped:  # an early stop scored these weights already
            checkpoint(epoch)
        assert best is not None
        if best[1] != step:
            model.load_state_dict(best[2])
        kept_step = best[1]
    seconds = time.perf_counter() - started
    metrics = evaluate(model, task, collator, config.eval_batch_size, config.max_eval_examples)
    model.eval()
    return model, SeedResult(seed, metrics, len(train), seconds, loss_value, kept_step=kept_step, steps=step)


def finetune_seed(
    model_dir: str | Path, task: TaskData, tokenizer: Any, config: FinetuneConfig, seed: int, show_progress: bool = True
) -> SeedResult:
    """The scores of :func:`train_classifier` (the model is dropped)."""
    return train_classifier(model_dir, task, tokenizer, config, seed, show_progress)[1]


def finetune_task(
    model_dir: str | Path,
    task: TaskData,
    tokenizer: Any,
    config: FinetuneConfig,
    show_progress: bool = True,
    keep_model: bool = False,
) -> TaskResult | tuple[TaskResult, nn.Module]:
    """All seeds of ``config`` on ``task``; the result carries the median of every metric. With ``keep_model``
    also the model of the seed with the best validation main metric (the first such seed on a tie)."""
    seeds, kept, kept_seed, kept_score = [], None, None, -math.inf
    for seed in config.seeds:
        model, result = train_classifier(model_dir, task, tokenizer, config, seed, show_progress)
        seeds.append(result)
        if show_progress:
            status(f"{task.name} seed {seed}: {_split_scores(result.metrics, task.metric_names[0])}")
        score = result.metrics["validation"][task.metric_names[0]]
        if keep_model and (kept is None or score > kept_score):
            kept, kept_seed, kept_score = model, seed, score
        del model
    sizes = {
        split: len(capped(examples, config.max_eval_examples))
        for split, examples in task.evaluation_splits().items()
    }
    result = TaskResult(task.name, task.metric_names[0], seeds, eval_examples=sizes, kept_seed=kept_seed)
    return (result, kept) if keep_model else result


# how results name each split: the held-out test first, and what validation was used for
SPLIT_NAMES = {"test": "test (held out)", "validation": "validation (chose the model)"}


def ordered_splits(splits: Iterable[str]) -> list[str]:
    """``splits`` without repeats, the held-out test first, then validation, then any others (MNLI mismatched)."""
    unique = list(dict.fromkeys(splits))
    return sorted(unique, key=lambda split: (split != "test", split != "validation", unique.index(split)))


def _split_scores(metrics: dict[str, dict[str, float]], metric: str) -> str:
    """``test accuracy 88.3, validation accuracy 95.0``: one metric on every split, the test first."""
    return ", ".join(f"{split} {metric} {100 * metrics[split][metric]:.1f}" for split in ordered_splits(metrics))


def results_table(results: list[TaskResult]) -> str:
    """Markdown: one row per task with its main metric's median over seeds (x100) on every labelled split, the
    held-out test first (validation chose each seed's epoch and the saved seed, so its score is the optimistic
    one), the average of each split over the tasks that have it, and per task the saved seed's scores."""
    splits = ordered_splits(split for result in results for split in result.median)
    header = " | ".join(SPLIT_NAMES.get(split, split) for split in splits)
    sizes = " / ".join(["train", *splits])
    lines = [
        f"| task | metric | {header} | seeds | examples: {sizes} |",
        "|---|---|" + "---|" * len(splits) + "---|---|",
    ]
    for result in results:
        values = " | ".join(
            f"{100 * result.median[split][result.main_metric]:.1f}" if split in result.median else ""
            for split in splits
        )
        counts = " / ".join(
            [str(result.seeds[0].train_examples), *(str(result.eval_examples.get(split, "")) for split in splits)]
        )
        lines.append(f"| {result.task} | {result.main_metric} | {values} | {len(result.seeds)} | {counts} |")
    if len(results) > 1:
        averages = " | ".join(
            f"{100 * statistics.mean(r.median[split][r.main_metric] for r in results if split in r.median):.1f}"
            for split in splits
        )
        lines.append(f"| average | | {averages} | | |")
    lines.append("")
    lines.append("Medians over seeds.")
    for result in results:
        kept = next((seed for seed in result.seeds if seed.seed == result.kept_seed), None)
        if kept is not None:
            lines.append(
                f"The saved {result.task} model is seed {kept.seed}'s (best validation {result.main_metric}): "
                f"{_split_scores(kept.metrics, result.main_metric)}."
            )
    return "\n".join(lines)


def write_results(results: list[TaskResult], path: str | Path, extra: dict[str, Any] | None = None) -> None:
    """``path``.json (every seed and median) and ``path``.md (the table). Each file is written beside its
    destination and renamed over it, so a failure leaves the old file or none, never a truncated one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {**(extra or {}), "tasks": [asdict(result) for result in results]}
    for destination, text in (
        (path.with_suffix(".json"), json.dumps(payload, indent=2) + "\n"),
        (path.with_suffix(".md"), results_table(results) + "\n"),
    ):
        temporary = destination.with_name(f".{destination.name}.tmp-{os.getpid()}")
        try:
            temporary.write_text(text)
            os.replace(temporary, destination)
        finally:
            temporary.unlink(missing_ok=True)
