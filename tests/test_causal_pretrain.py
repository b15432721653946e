"""Causal-LM pretraining through the same loop as MLM: it learns, it logs validation perplexity, gradient
accumulation counts every predicted token once, and a killed run resumes to the weights of an uninterrupted one."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from ultrafastbert.data.causal import causal_rows, predicted_tokens
from ultrafastbert.train.checkpointing import CheckpointError
from ultrafastbert.train.pretrain import PretrainConfig, Pretrainer, causal_lm_metrics

sys.path.insert(0, str(Path(__file__).parent / "scripts"))
from pretrain_tiny import SEQ_LEN, VOCAB, mask_quarter, synthetic_sequences  # noqa: E402
from pretrain_tiny import tiny_decoder as tiny_causal_decoder  # noqa: E402
from test_pretrain import final_weights, kill_after, max_difference, run_script  # noqa: E402


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_decoder(family: str = "ultrafastgpt") -> torch.nn.Module:
    """A 2-layer UltraFastGPT with FFF 2x2 feedforwards (hidden 32), or transformers' GPT-2 of that size."""
    torch.manual_seed(0)
    if family == "gpt2":  # any transformers causal LM taking labels trains the same way
        config = GPT2Config(
            vocab_size=VOCAB, n_positions=SEQ_LEN, n_embd=32, n_layer=2, n_head=4, resid_pdrop=0.0, embd_pdrop=0.0,
            attn_pdrop=0.0,
        )  # fmt: skip
        return GPT2LMHeadModel(config)
    return tiny_causal_decoder()


def causal_trainer(
    output: Path, steps: int = 6, lr: float = 3e-3, family: str = "ultrafastgpt", **settings: object
) -> Pretrainer:
    defaults = {"micro_batch": 8, "final_batch": 16, "max_steps": steps, "lr": lr, "checkpoint_every_minutes": 60}
    return Pretrainer(
        tiny_decoder(family),
        synthetic_sequences(96, seed=1),
        causal_rows,
        PretrainConfig(**(defaults | settings)),
        output,
        validation_sequences=synthetic_sequences(32, seed=2),
        run_config={"model": "tiny decoder"},
        objective="causal",
    )


def weights(run: Pretrainer) -> dict[str, torch.Tensor]:
    return {name: value.detach() for name, value in run.model.state_dict().items()}


def test_causal_batches_are_the_sequences_themselves():
    ids = torch.stack(synthetic_sequences(3, seed=0))
    inputs, labels = causal_rows(ids, [torch.Generator()] * 3)
    assert torch.equal(inputs, ids) and torch.equal(labels, ids)
    labels[0, 0] = -100
    assert not torch.equal(inputs, labels)  # the labels are a copy: the model may not change the inputs through them
    assert predicted_tokens(torch.stack(synthetic_sequences(3, seed=0))) == 3 * (SEQ_LEN - 1)


@pytest.mark.parametrize("family", ["ultrafastgpt", "gpt2"])
def test_causal_pretraining_lowers_validation_loss_and_logs_perplexity(tmp_path, family):
    run = causal_trainer(tmp_path, steps=40, lr=1e-2, family=family, eval_every_steps=20)
    before = run.evaluate()
    final = run.run()
    assert final["step"] == 40 and not final["interrupted"]
    assert final["val_loss"] < before["val_loss"] - 1.0, (before, final)
    assert final["val_perplexity"] == pytest.approx(math.exp(final["val_loss"]))
    assert final["val_predicted_tokens"] == 32 * (SEQ_LEN - 1)
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    evaluated = [record for record in records if "val_perplexity" in record]
    assert [record["step"] for record in evaluated] == [20, 40]
    assert evaluated[0]["val_loss"] > evaluated[1]["val_loss"]


def test_tree_visits_count_every_token(tmp_path):
    """No token is masked, so the FFF routing statistics (tree health, balancing) count them all: each tree's root
    is visited once per training token."""
    run = causal_trainer(tmp_path, steps=3, tree_health_every_steps=1000)
    run.run()
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    tokens = sum(record["batch_sequences"] for record in records if "batch_sequences" in record) * SEQ_LEN
    assert len(run.tree_visits) == 2
    for counts in run.tree_visits:  # one (trees, nodes) per layer; node 0 is each tree's root
        assert counts[:, 0].tolist() == [tokens, tokens]


def test_causal_metrics_equal_the_models_own_loss():
    model = tiny_decoder()
    sequences = synthetic_sequences(12, seed=3)
    metrics = causal_lm_metrics(model, sequences, batch_size=5)  # uneven batches: 5, 5, 2
    ids = torch.stack(sequences)
    with torch.no_grad():
        loss = model(input_ids=ids, labels=ids).loss.item()
    assert metrics["val_loss"] == pytest.approx(loss, rel=1e-5)
    assert metrics["val_perplexity"] == pytest.approx(math.exp(loss), rel=1e-5)


def test_accumulated_micro_batches_equal_one_large_one(tmp_path):
    """Two micro-batches of 4 and one of 8 give the same step: every predicted token counts once."""
    settings = {"steps": 1, "final_batch": 8, "batch_ramp_until": 0.0, "clip_norm": 0.0}
    accumulated = causal_trainer(tmp_path / "a", micro_batch=4, **settings)
    accumulated.run()
    whole = causal_trainer(tmp_path / "b", micro_batch=8, **settings)
    whole.run()
    assert max_difference(weights(accumulated), weights(whole)) < 1e-6
    assert max_difference(weights(whole), weights(causal_trainer(tmp_path / "c"))) > 1e-4  # it did train


def test_a_killed_causal_run_resumes_to_the_uninterrupted_weights(tmp_path):
    uninterrupted = causal_trainer(tmp_path / "a", steps=6, checkpoint_every_minutes=0)
    uninterrupted.run()
    kill_after(causal_trainer(tmp_path / "b", steps=6, checkpoint_every_minutes=0), 3)
    resumed = causal_trainer(tmp_path / "b", steps=6, checkpoint_every_minutes=0)
    assert resumed.resume() and resumed.step == 3
    assert resumed.run()["step"] == 6
    assert max_difference(weights(resumed), weights(uninterrupted)) == 0.0


def test_a_masked_lm_checkpoint_does_not_resume_as_causal(tmp_path):
    mlm = causal_trainer(tmp_path, steps=2)
    mlm.objective, mlm.masker = "mlm", mask_quarter
    mlm.save()
    with pytest.raises(CheckpointError, match="objective"):
        causal_trainer(tmp_path, steps=2).resume()


def test_an_unknown_objective_is_refused(tmp_path):
    with pytest.raises(ValueError, match="objective must be one of mlm, causal"):
        Pretrainer(tiny_decoder(), synthetic_sequences(8, seed=0), causal_rows, PretrainConfig(max_steps=1), tmp_path,
                   objective="next-token")  # fmt: skip


@pytest.mark.slow
def test_two_processes_equal_one_with_twice_the_micro_batch(tmp_path):
    one = run_script(str(tmp_path / "one"), "--causal", "--steps", "4", "--micro-batch", "4", "--final-batch", "8")
    assert one.returncode == 0, one.stderr
    args = ["--causal", "--steps", "4", "--micro-batch", "2", "--final-batch", "8"]
    two = run_script(str(tmp_path / "two"), *args, torchrun=True)
    assert two.returncode == 0, two.stderr
    difference = max_difference(final_weights(tmp_path / "one"), final_weights(tmp_path / "two"))
    assert difference <= 1e-5, difference
    initial = {name: value for name, value in tiny_causal_decoder().state_dict().items() if name != "lm_head.weight"}
    assert max_difference(final_weights(tmp_path / "one"), initial) > 1e-3  # and it trained
