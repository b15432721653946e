"""The quality study: does an FFF model keep the dense model's quality, against the baselines that decide it?

Every variant (``variants.py``) is pretrained with the same recipe, data, tokenizer, seed and budget, finetuned on
the same tasks over the same seeds, and timed; ``report.py`` turns the results into ``report.{md,json}`` and plots.

The output folder is the study's state, so a rerun of the same command continues where the last one stopped:

```
<output>/study.json                      the settings (a rerun with other settings is refused)
<output>/baseline.json                   the copy / unigram guess of masked tokens on the validation text
<output>/<variant>/pretrain/             checkpoints/ and metrics.jsonl of its pretraining run (resumed)
<output>/<variant>/model/                the pretrained model, once its budget is spent
<output>/<variant>/pretrain.json         its pretraining summary and tree health
<output>/<variant>/finetune/<task>/seed<k>.json   one finished finetuning run each
<output>/timing.json                     FF layer times of every variant at the study's size and at paper size
```
Every file is written atomically (temporary name, then rename), so a kill never leaves half a result.
"""

from __future__ import annotations

import json
import os
import statistics
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..bench.timing import Rounds, TimedCall, machine_info, time_interleaved
from ..cache import cache_root
from ..data import MLMCollator, TaskData, load_glue_task, packed_dataset, prepare_default_data, tokenizer_for_corpus
from ..fff import FFF, kernels
from ..model.crammedbert.configuration import CrammedBertConfig
from ..model.crammedbert.modeling import CrammedBertFeedForward, CrammedBertForMaskedLM
from ..model.health import model_tree_health
from ..train.finetune import SeedResult, TaskResult, capped, finetune_seed, majority_baseline
from ..train.pretrain import PretrainConfig, Pretrainer, TrainingDivergedError, mask_generators
from ..train.run_folder import run_folder_lock
from .config import StudyConfig, StudyError
from .report import build_report, write_report
from .state import check_folder, claim_folder, read_json, write_json
from .variants import PAPER_HIDDEN, PAPER_WIDTH

# ---------------------------------------------------------------------------------------------------- the data


@dataclass
class StudyData:
    tokenizer: Any
    train: Sequence[Tensor]
    validation: list[Tensor]
    masker: Any
    tasks: dict[str, TaskData]


def load_study_data(config: StudyConfig, default_data: Any | None = None) -> StudyData:
    """Corpus, tokenizer, packed sequences and tasks; ``default_data`` replaces the embedded default (tests)."""
    cache = Path(config.cache_dir) if config.cache_dir else cache_root()
    data = default_data or prepare_default_data(cache, update_index=True)
    missing = [task for task in config.tasks if task not in data.tasks]
    if missing:
        raise StudyError(f"the data has no task(s) {', '.join(missing)}")
    tasks = {name: data.tasks[name] for name in config.tasks}
    for name in config.glue_tasks:
        try:
            tasks[name] = load_glue_task(name, config.glue_dir)
        except (FileNotFoundError, KeyError, ValueError) as error:
            raise StudyError(f"GLUE task {name!r} in {config.glue_dir}: {error}") from error
    tokenizer = tokenizer_for_corpus(data.corpus, config.vocab_size, cache, model_max_length=config.seq_len)
    train = packed_dataset(data.corpus, tokenizer, "train", config.seq_len, cache)
    validation_all = packed_dataset(data.corpus, tokenizer, "validation", config.seq_len, cache)
    validation = [validation_all[index] for index in range(min(config.validation_sequences, len(validation_all)))]
    if not validation:
        raise StudyError("the corpus has no validation sequences")
    masker = MLMCollator(tokenizer, seed=config.seed).mask_rows
    return StudyData(tokenizer, train, validation, masker, tasks)


def copy_unigram_baseline(data: StudyData, seed: int, batch_size: int = 64) -> dict[str, float]:
    """Accuracy of the best guess that ignores context, on the validation masks the models are scored on: copy
    the input token where it is not ``<mask>``, else the most frequent training token. ``replaced`` counts only
    masked tokens whose input was replaced (as ``val_accuracy_replaced`` does)."""
    counts: Counter[int] = Counter()
    special = set(data.tokenizer.all_special_ids)
    for index in range(0, len(data.train), max(len(data.train) // 2000, 1)):  # a spread sample of sequences
        counts.update(token for token in data.train[index].tolist() if token not in special)
    most_frequent = counts.most_common(1)[0][0]
    mask_id = data.tokenizer.mask_token_id
    correct = masked = correct_replaced = replaced = 0
    for start in range(0, len(data.validation), batch_size):
        positions = list(range(start, min(len(data.validation), start + batch_size)))
        ids = torch.stack([data.validation[p] for p in positions])
        # the same masks as the models' validation (``mlm_metrics`` seeds them with seed + 7919)
        inputs, labels = data.masker(ids, mask_generators(seed + 7919, positions))
        labelled = labels != -100
        guess = torch.where(inputs == mask_id, torch.full_like(inputs, most_frequent), inputs)[labelled]
        targets, was_replaced = labels[labelled], (inputs != labels)[labelled]
        hits = guess == targets
        correct += int(hits.sum())
        masked += targets.numel()
        correct_replaced += int(hits[was_replaced].sum())
        replaced += int(was_replaced.sum())
    return {
        "accuracy": correct / max(masked, 1),
        "accuracy_replaced": correct_replaced / max(replaced, 1),
        "most_frequent_token": data.tokenizer.convert_ids_to_tokens(most_frequent),
    }


# ---------------------------------------------------------------------------------------------------- stages


def _log(message: str) -> None:
    print(f"[study] {message}", flush=True)


def probe_step_seconds(config: StudyConfig, data: StudyData) -> float:
    """Seconds of one forward+backward of one micro-batch of the largest variant (the dense reference)."""
    torch.manual_seed(config.seed)
    model = CrammedBertForMaskedLM(config.model_config("dense", len(data.tokenizer)))
    ids = torch.stack([data.train[index % len(data.train)] for index in range(config.micro_batch)])
    inputs, labels = data.masker(ids, mask_generators(config.seed, range(config.micro_batch)))
    seconds = []
    for _ in range(2):  # the first call pays one-time costs
        started = time.perf_counter()
        model(input_ids=inputs, labels=labels, sparse_prediction=True).loss.backward()
        seconds.append(time.perf_counter() - started)
    return seconds[-1]


def variant_pretrainer(
    config: StudyConfig,
    variant: str,
    data: StudyData,
    folder: Path,
    model_overrides: dict[str, Any] | None = None,
    **train_overrides: Any,
) -> Pretrainer:
    """The pretraining run of one variant as the study sets it up (weights seeded, the study's recipe and budget),
    writing to ``folder``; not started nor resumed. ``model_overrides`` replace fields of the variant's model
    config and ``train_overrides`` fields of its ``PretrainConfig`` (``benchmarks/tree_balance.py``: a remedy's
    options, less frequent logging)."""
    torch.manual_seed(config.seed)
    model_config = config.model_config(variant, len(data.tokenizer), **(model_overrides or {}))
    model = CrammedBertForMaskedLM(model_config)
    recipe = {
        "micro_batch": config.micro_batch,
        "final_batch": config.final_batch,
        "max_minutes": config.minutes_per_variant,
        "max_steps": config.steps_per_variant,
        "lr": config.lr,
        "seed": config.seed,
        "checkpoint_every_minutes": 2.0,
        "eval_every_steps": config.eval_every_steps,
        "log_every_steps": 1,
    }
    return Pretrainer(
        model,
        data.train,
        data.masker,
        PretrainConfig(**{**recipe, **train_overrides}),
        folder,
        validation_sequences=data.validation,
        run_config={"study_variant": variant, "model": model_config.to_diff_dict()},
    )


def pretrain_variant(config: StudyConfig, variant: str, data: StudyData, out: Path) -> dict[str, Any]:
    """Pretrain one variant (continuing its run if one was started), save it, and summarise it."""
    folder = out / variant
    summary_file = folder / "pretrain.json"
    if summary_file.is_file():
        return read_json(summary_file)
    trainer = variant_pretrainer(config, variant, data, folder / "pretrain")
    model, model_config = trainer.model, trainer.model.config
    resumed = trainer.resume()
    _log(f"pretraining {variant} ({model_config.name})" + (f", resumed at step {trainer.step}" if resumed else ""))
    load_before = os.getloadavg()[0]
    try:
        final = trainer.run()
    except TrainingDivergedError as error:  # not finetuned nor reported as if it had trained
        raise StudyError(
            f"pretraining of {variant} diverged, so the study stops: {error}; start a study with a lower --lr in "
            "another --output"
        ) from None
    if final["interrupted"]:
        raise KeyboardInterrupt(f"pretraining of {variant} stopped at step {final['step']}; rerun to continue")
    model.save_pretrained(folder / "model")
    data.tokenizer.save_pretrained(folder / "model")
    health = model_tree_health(model, validation_batches(data, config.micro_batch))
    summary = {
        "variant": variant,
        "name": model_config.name,
        "parameters": model.num_parameters(),
        "ff_neurons_per_token": model_config.ff_neurons_per_token,
        "ff_flops_per_token": ff_flops_per_token(model_config),
        "steps": final["step"],
        "sequences": _sequences_seen(folder / "pretrain" / "metrics.jsonl"),
        "minutes": final["elapsed"] / 60,
        "load_average": [load_before, os.getloadavg()[0]],
        "val_loss": final.get("val_loss"),
        "val_accuracy": final.get("val_accuracy"),
        "val_accuracy_replaced": final.get("val_accuracy_replaced"),
        "tree_health": [asdict(layer) for layer in health],
        "model_dir": str((folder / "model").relative_to(out)),
    }
    write_json(summary_file, summary)
    return summary


def ff_flops_per_token(config: CrammedBertConfig) -> int:
    """Feedforward FLOPs per token and layer: two matrix products of ``neurons x H`` (a multiply-add is 2 FLOPs)."""
    return 4 * config.hidden_size * config.ff_neurons_per_token


def validation_batches(data: StudyData, batch_size: int):
    """The validation sequences as unmasked ``(input_ids, None)`` batches: the text tree health is measured on."""
    for start in range(0, len(data.validation), batch_size):
        yield torch.stack(data.validation[start : start + batch_size]), None


def pretraining_throughput(metrics_file: Path) -> dict[str, float]:
    """Median and 10th percentile of the training tokens per second over the run's steps: a low 10th percentile
    against the median shows that other work on the machine slowed part of the run (and cost it steps)."""
    rates = sorted(
        record["tokens_per_second"]
        for line in metrics_file.read_text().splitlines()
        if "tokens_per_second" in (record := json.loads(line))
    )
    return {"median": statistics.median(rates), "p10": rates[len(rates) // 10]}


def _sequences_seen(metrics_file: Path) -> int:
    """Sequences of the logged steps (a resumed run may log a step twice: the last record of a step counts)."""
    by_step: dict[int, int] = {}
    for line in metrics_file.read_text().splitlines():
        record = json.loads(line)
        if "batch_sequences" in record:
            by_step[record["step"]] = record["batch_sequences"]
    return sum(by_step.values())


def finetune_variant(config: StudyConfig, variant: str, data: StudyData, out: Path) -> dict[str, TaskResult]:
    """Every (task, seed) of one variant, each finished run kept, so a rerun does only what is missing."""
    model_dir = out / variant / "model"
    results = {}
    for name, task in data.tasks.items():
        seeds = []
        for seed in config.finetune_seeds:
            result_file = out / variant / "finetune" / name / f"seed{seed}.json"
            if result_file.is_file():
                seeds.append(SeedResult(**read_json(result_file)))
                continue
            _log(f"finetuning {variant} on {name}, seed {seed}")
            result = finetune_seed(model_dir, task, data.tokenizer, config.finetune_config(seed), seed, False)
            write_json(result_file, asdict(result))
            seeds.append(result)
        splits = task.evaluation_splits().items()
        sizes = {split: len(capped(examples, config.max_eval_examples)) for split, examples in splits}
        results[name] = TaskResult(name, task.metric_names[0], seeds, eval_examples=sizes)
    return results


def score_split(task: TaskData) -> str:
    """Scores come from the held-out test split where it is labelled (local tasks), else validation (GLUE)."""
    return "test" if task.test else "validation"


def _feedforward(config: CrammedBertConfig) -> nn.Module | None:
    if config.ffn_type == "fff":
        return FFF(config.hidden_size, config.fff_depth, trees=config.fff_trees, balance_rate=config.fff_balance_rate)
    if config.ffn_type == "dense":
        return CrammedBertFeedForward(config)
    return None


@torch.no_grad()
def time_feedforwards(config: StudyConfig) -> dict[str, Any]:
    """Inference time of each variant's FF layer alone, at the study's size and at paper size (the same rule
    applied to hidden 768 and W = 3072), on random normal inputs: median ms per call, the variants of one size
    and token count timed in interleaved rounds."""
    sizes = {"study": (config.hidden_size, config.dense_width), "paper": (PAPER_HIDDEN, PAPER_WIDTH)}
    table: dict[str, Any] = {"tokens": list(config.timing_tokens), "ms": {}, "threads": torch.get_num_threads()}
    generator = torch.Generator().manual_seed(0)
    for size, (hidden, width) in sizes.items():
        sized = StudyConfig(**{**asdict(config), "hidden_size": hidden, "dense_width": width, "heads": 1})
        modules = {variant: _feedforward(sized.model_config(variant, vocab_size=8)) for variant in config.variants}
        table["ms"][size] = {variant: {} for variant in config.variants}
        for tokens in config.timing_tokens:
            x = torch.randn(tokens, hidden, generator=generator)
            present = {variant: module for variant, module in modules.items() if module is not None}
            calls = [TimedCall(variant, lambda m=module, x=x: m(x)) for variant, module in present.items()]
            timings = time_interleaved(calls, Rounds(min_seconds=config.timing_seconds * len(calls)))
            for variant in config.variants:
                timing = timings.get(variant)
                table["ms"][size][variant][str(tokens)] = 0.0 if timing is None else timing.median_s * 1e3
    return table


# ---------------------------------------------------------------------------------------------------- the study


def run_study(config: StudyConfig, default_data: Any | None = None, command: str | None = None) -> dict[str, Any]:
    """Run (or continue) the study and write its report; returns the report's JSON content. ``command``, the
    command line that ran it, goes into the report; ``default_data`` replaces the embedded data (tests)."""
    with run_folder_lock(config.output_dir):
        return _run_study(config, default_data, command)


def _run_study(config: StudyConfig, default_data: Any | None, command: str | None) -> dict[str, Any]:
    # every check that can refuse the settings runs before the folder records them, so a corrected command in the
    # same folder is not taken for another study
    config.check_models()
    out = check_folder(config)
    _log(f"folder {out}; preparing data")
    data = load_study_data(config, default_data)
    kernels.available()  # build the FFF kernel before any budget starts
    if config.minutes_per_variant is not None:
        step = probe_step_seconds(config, data)
        if config.minutes_per_variant * 60 < 2 * step:
            raise StudyError(
                f"minutes_per_variant={config.minutes_per_variant} is too short: one optimiser step of the dense "
                f"reference takes {step:.2f} s here"
            )
    claim_folder(config)
    baseline_file = out / "baseline.json"
    if not baseline_file.is_file():
        write_json(baseline_file, copy_unigram_baseline(data, config.seed))
    pretraining = {variant: pretrain_variant(config, variant, data, out) for variant in config.variants}
    for variant, summary in pretraining.items():
        summary["tokens_per_second"] = pretraining_throughput(out / variant / "pretrain" / "metrics.jsonl")
    finetuning = {variant: finetune_variant(config, variant, data, out) for variant in config.variants}
    timing_file = out / "timing.json"
    if not timing_file.is_file():
        _log("timing the feedforward layers")
        write_json(timing_file, time_feedforwards(config))
    majority = {
        name: majority_baseline(task, score_split(task), config.finetune_config()) for name, task in data.tasks.items()
    }
    report = build_report(
        config,
        pretraining,
        finetuning,
        {name: score_split(task) for name, task in data.tasks.items()},
        majority,
        read_json(baseline_file),
        read_json(timing_file),
        machine_info(),
        command,
    )
    write_report(report, out)
    _log(f"wrote {out}/report.md, report.json and plots")
    return report


__all__ = ["run_study", "variant_pretrainer"]
