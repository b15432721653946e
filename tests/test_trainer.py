"""The ``transformers.Trainer`` route of docs/training.md works on these models: it trains a classifier from a
pretrained folder, lowers the loss of a learnable task and saves a folder the Auto class loads back."""

from __future__ import annotations

import random

import pytest
import torch

pytest.importorskip("accelerate")  # installed by requirements.txt; Trainer refuses to start without it

from model_helpers import tiny_pretrained  # noqa: E402
from transformers import AutoModelForSequenceClassification, AutoTokenizer, Trainer, TrainingArguments  # noqa: E402

import ultrafastbert  # noqa: E402, F401  (registers the Auto classes)

WORDS = ["the", "a", "film", "was", "and", "it", "fine", "good", "dull", "bad"]


@pytest.mark.slow
def test_trainer_finetunes_a_saved_model_and_saves_a_loadable_classifier(tmp_path):
    pretrained = tmp_path / "pretrained"
    tiny_pretrained(pretrained, WORDS, vocab_size=40, max_positions=16)

    tokenizer = AutoTokenizer.from_pretrained(pretrained)
    model = AutoModelForSequenceClassification.from_pretrained(
        pretrained, num_labels=2, id2label={0: "neg", 1: "pos"}, label2id={"neg": 0, "pos": 1}
    )
    rng = random.Random(0)
    rows = []
    for _ in range(128):
        label = rng.randrange(2)
        words = rng.choices(WORDS[:6], k=5) + [rng.choice(["fine", "good"] if label else ["dull", "bad"])]
        rng.shuffle(words)
        rows.append(dict(tokenizer(" ".join(words), truncation=True, max_length=16), labels=label))
    args = TrainingArguments(
        str(tmp_path / "trainer"), learning_rate=5e-3, num_train_epochs=6, per_device_train_batch_size=16,
        lr_scheduler_type="cosine", warmup_steps=0.1, logging_steps=8, report_to=[], save_strategy="no",
        use_cpu=True, seed=0,
    )  # fmt: skip
    trainer = Trainer(model=model, args=args, train_dataset=rows, processing_class=tokenizer)
    trainer.train()
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert len(losses) >= 4 and losses[-1] < 0.5 * losses[0], losses  # it learned the keyword task

    trainer.save_model(str(tmp_path / "saved"))
    loaded = AutoModelForSequenceClassification.from_pretrained(tmp_path / "saved").eval()
    model.eval()
    batch = tokenizer(["a good film", "a bad film"], return_tensors="pt", padding=True)
    with torch.no_grad():
        expected = model(batch["input_ids"], batch["attention_mask"]).logits
        got = loaded(batch["input_ids"], batch["attention_mask"]).logits
    torch.testing.assert_close(got, expected)
    assert loaded.config.id2label == {0: "neg", 1: "pos"}
