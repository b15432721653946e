"""Train every feedforward arm on every fact set, measure what it recalls, and write the report.

Each arm is a one-layer crammedBERT (``CrammedBertForMaskedLM``, no dropout) that differs only in its feedforward
(``config.ARMS``); every arm of a fact set sees the same rows in the same order for the same number of steps
(``exposures x steps_per_epoch``), with Adam, a short warmup and a linear decay to zero, so its last recall is its
plateau for that budget. A finished arm leaves ``arms/<task>-<N>-<arm>.json`` in the output folder; a rerun of the
same settings skips it, so a killed benchmark continues where it stopped.
"""

from __future__ import annotations

import json
import math
import statistics
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..bench.timing import machine_info
from ..data.debian import read_wordnet
from ..data.sources import is_unpacked, package_dir
from ..fff import FFF
from ..fff.balance import take_routing_loss, update_routing_offsets
from ..model.crammedbert.configuration import CrammedBertConfig
from ..model.crammedbert.modeling import CrammedBertForMaskedLM
from ..model.health import model_tree_health
from ..train.run_folder import RunFolderError, run_folder_lock, write_json_atomic
from .config import CapacityConfig
from .facts import IGNORE, FactSet, split_wordnet, synthetic_facts, wordnet_fact_set, wordnet_lexname_facts
from .report import ArmResult, write_report

SETTINGS = "settings.json"
ARMS_FOLDER = "arms"
EVAL_ROWS = 2048  # rows per evaluation forward


def arm_fields(arm: str, config: CapacityConfig) -> dict[str, Any]:
    """The ``CrammedBertConfig`` feedforward fields of ``arm``."""
    dense = {"ffn_type": "dense", "hidden_act": "gelu"}
    tree = {"ffn_type": "fff", "fff_trees": 1, "fff_depth": config.depth}
    return {
        "no-ff": {"ffn_type": "none"},
        "narrow": {**dense, "intermediate_size": config.path_width},
        "fff": tree,
        "fff-balanced": {**tree, "fff_balance_rate": config.balance_rate},
        "wide": {**dense, "intermediate_size": config.tree_width},
        "fff-balance-loss": {**tree, "fff_balance_loss": config.balance_loss},
    }[arm]


def build_model(arm: str, config: CapacityConfig, facts: FactSet) -> CrammedBertForMaskedLM:
    model_config = CrammedBertConfig(
        vocab_size=facts.vocab_size,
        hidden_size=config.hidden_size,
        num_hidden_layers=config.layers,
        num_attention_heads=config.heads,
        max_position_embeddings=facts.input_ids.shape[1],
        embedding_dropout_prob=0.0,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        initializer_range=config.init_std,
        **arm_fields(arm, config),
    )
    return CrammedBertForMaskedLM(model_config)


def feedforward_cost(model: CrammedBertForMaskedLM, config: CapacityConfig) -> tuple[int, int, int]:
    """Parameters of the feedforward layers, neurons each token evaluates and FF FLOPs per token (2 per
    multiply-add, in and out; FFF node biases and the activation not counted)."""
    parameters = neurons = 0
    for layer in model.encoder.layers:
        if layer.ffn is None:
            continue
        parameters += sum(p.numel() for p in layer.ffn.parameters())
        neurons += layer.ffn.neurons_per_token if isinstance(layer.ffn, FFF) else layer.ffn.dense_in.out_features
    return parameters, neurons, 4 * config.hidden_size * neurons


@torch.no_grad()
def recall(model: CrammedBertForMaskedLM, facts: FactSet) -> tuple[float, Tensor]:
    """Exact-match share of the asked facts (argmax over the whole vocabulary) and the predictions."""
    was_training = model.training
    model.eval()
    hits, asked, predictions = 0, 0, []
    for start in range(0, facts.rows, EVAL_ROWS):
        rows = slice(start, start + EVAL_ROWS)
        labels = facts.labels[rows]
        logits = model(input_ids=facts.input_ids[rows], attention_mask=facts.attention_mask[rows]).logits
        asked_here = labels != IGNORE
        predicted = logits.argmax(dim=-1)[asked_here]
        predictions.append(predicted)
        hits += int((predicted == labels[asked_here]).sum())
        asked += int(asked_here.sum())
    model.train(was_training)
    return hits / asked, torch.cat(predictions)


def train_arm(
    arm: str, config: CapacityConfig, facts: FactSet, task: str, size: int, heldout: FactSet | None = None
) -> ArmResult:
    """Train ``arm`` on ``facts`` for ``config.total_steps`` and measure it."""
    torch.manual_seed(config.seed)
    model = build_model(arm, config, facts)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    steps = config.total_steps
    warmup = max(1, round(config.warmup_fraction * steps))
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: min((step + 1) / warmup, max(0.0, (steps - step) / max(1, steps - warmup)))
    )
    balancing = arm == "fff-balanced"
    evaluate_at = {round(steps * (index + 1) / config.evaluations) for index in range(config.evaluations)}
    order = torch.Generator().manual_seed(config.seed)
    batch_rows = math.ceil(facts.rows / config.steps_per_epoch)
    step_seconds, curve, loss_value = [], [], float("nan")
    model.train()
    started = time.perf_counter()
    step = 0
    while step < steps:
        permutation = torch.randperm(facts.rows, generator=order)
        for rows in permutation.split(batch_rows):
            if step == steps:
                break
            tick = time.perf_counter()
            loss = model(
                input_ids=facts.input_ids[rows],
                attention_mask=facts.attention_mask[rows],
                labels=facts.labels[rows],
                sparse_prediction=True,
            ).loss
            auxiliary = take_routing_loss(model)  # the fff-balance-loss arm's load-balancing loss
            optimizer.zero_grad(set_to_none=True)
            (loss if auxiliary is None else loss + auxiliary).backward()
            optimizer.step()
            schedule.step()
            if balancing:
                update_routing_offsets(model)
            step_seconds.append(time.perf_counter() - tick)
            step += 1
            loss_value = float(loss.detach())
            if not math.isfinite(loss_value):
                raise FloatingPointError(f"arm {arm} on {task} {size}: loss {loss_value} at step {step}")
            if step in evaluate_at:
                curve.append((step, recall(model, facts)[0]))
    train_seconds = time.perf_counter() - started
    final_recall = curve[-1][1]
    parameters, neurons, flops = feedforward_cost(model, config)
    bits = final_recall * facts.facts * math.log2(facts.values)
    health = model_tree_health(model, [(facts.input_ids, facts.attention_mask)])
    result = ArmResult(
        task=task,
        arm=arm,
        size=size,
        facts=facts.facts,
        values=facts.values,
        recall=final_recall,
        bits_stored=bits,
        recall_curve=curve,
        final_loss=loss_value,
        steps=steps,
        batch_rows=batch_rows,
        ff_parameters=parameters,
        ff_neurons_per_token=neurons,
        ff_flops_per_token=flops,
        bits_per_ff_parameter=bits / parameters if parameters else None,
        ms_per_step=1000 * statistics.median(step_seconds),
        train_seconds=train_seconds,
        tree_health=[asdict(layer) for layer in health] or None,
    )
    if heldout is not None:
        result.heldout_accuracy = recall(model, heldout)[0]
        answers = facts.labels[facts.labels != IGNORE]
        result.majority_share = float(torch.bincount(answers).max()) / answers.numel()
    return result


def _wordnet_pairs(config: CapacityConfig, cache_dir: str | Path | None) -> list[tuple[str, str]]:
    if not is_unpacked("wordnet-base", cache_dir):
        raise FileNotFoundError(
            "the WordNet variant needs the wordnet-base package in the data cache (any pretrain or study run "
            "fetches it); or pass --wordnet-lemmas with no value to skip it"
        )
    synsets = read_wordnet(package_dir("wordnet-base", cache_dir) / "usr/share/wordnet")
    return wordnet_lexname_facts(synsets, config.wordnet_max_letters)


def _check_folder(folder: Path, config: CapacityConfig) -> None:
    """Refuse a folder that holds a benchmark of other settings (its results would not compare)."""
    path = folder / SETTINGS
    if not path.is_file():
        return
    held = json.loads(path.read_text())
    wanted = _jsonable(config.settings())
    differing = sorted(name for name in set(held) | set(wanted) if held.get(name) != wanted.get(name))
    if differing:
        raise RunFolderError(
            f"{folder} holds a capacity benchmark with other settings ({', '.join(differing)}); "
            "rerun with those settings to continue it, or choose another --output"
        )


def _jsonable(settings: dict[str, Any]) -> dict[str, Any]:
    return {name: list(value) if isinstance(value, tuple) else value for name, value in settings.items()}


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def run_capacity(config: CapacityConfig, command: str, cache_dir: str | Path | None = None) -> dict[str, Any]:
    """Run (or continue) the benchmark in ``config.output_dir`` and write its report; returns the report."""
    folder = Path(config.output_dir)
    pairs = _wordnet_pairs(config, cache_dir) if config.wordnet_lemmas else []
    if pairs:
        split_wordnet(pairs, max(config.wordnet_lemmas), config.wordnet_heldout, config.seed)  # enough lemmas?
    torch.set_num_threads(config.threads)
    with run_folder_lock(folder):
        _check_folder(folder, config)
        write_json_atomic(folder / SETTINGS, _jsonable(config.settings()))
        (folder / ARMS_FOLDER).mkdir(exist_ok=True)
        jobs: list[tuple[str, int]] = [("synthetic", people) for people in config.people]
        jobs += [("wordnet", lemmas) for lemmas in config.wordnet_lemmas]
        results: list[ArmResult] = []
        for task, size in jobs:
            facts, heldout = _fact_sets(task, size, config, pairs)
            for arm in config.arms:
                path = folder / ARMS_FOLDER / f"{task}-{size}-{arm}.json"
                if path.is_file():
                    results.append(ArmResult(**json.loads(path.read_text())))
                    continue
                result = train_arm(arm, config, facts, task, size, heldout)
                write_json_atomic(path, asdict(result))
                results.append(result)
                _say(
                    f"capacity: {task} {size} {arm}: recall {result.recall:.3f}, {result.bits_stored:,.0f} bits, "
                    f"{result.ms_per_step:.1f} ms/step, {result.train_seconds:.0f} s"
                )
                write_report(folder, config, results, command, machine_info())  # partial results readable at once
        return write_report(folder, config, results, command, machine_info())


def _fact_sets(
    task: str, size: int, config: CapacityConfig, pairs: list[tuple[str, str]]
) -> tuple[FactSet, FactSet | None]:
    if task == "synthetic":
        return synthetic_facts(size, config.attributes, config.values, config.name_pool, config.seed), None
    trained, heldout = split_wordnet(pairs, size, config.wordnet_heldout, config.seed)
    return (
        wordnet_fact_set(trained, config.wordnet_max_letters),
        wordnet_fact_set(heldout, config.wordnet_max_letters) if heldout else None,
    )
