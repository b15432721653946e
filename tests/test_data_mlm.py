"""Packing into fixed-length sequences (cached, memory-mapped) and the MLM masking statistics (25%, 80/10/10)."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from ultrafastbert.data.corpus import write_corpus
from ultrafastbert.data.mlm import (
    IGNORE_INDEX,
    MaskingConfig,
    MLMCollator,
    PackedDataset,
    mask_tokens,
    pack_documents,
    packed_dataset,
)
from ultrafastbert.data.tokenizer import train_tokenizer

WORDS = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi omicron pi rho sigma tau".split()


@pytest.fixture(scope="module")
def tokenizer():
    rng = np.random.default_rng(0)
    texts = [" ".join(rng.choice(WORDS, size=12)) for _ in range(200)]
    with pytest.warns(UserWarning, match="yields only"):
        return train_tokenizer(texts, vocab_size=300)


def test_pack_documents_concatenates_and_cuts(tokenizer):
    documents = ["alpha beta", "gamma", "delta epsilon zeta"]  # 3 + 2 + 4 tokens with their <sep>
    array, stats = pack_documents(documents, tokenizer, seq_len=4)
    assert array.shape == (2, 4) and array.dtype == np.uint16
    assert tokenizer.convert_ids_to_tokens(array.reshape(-1).tolist()) == [
        "alpha", "beta", "<sep>", "gamma", "<sep>", "delta", "epsilon", "zeta",
    ]  # fmt: skip
    assert (stats.documents, stats.tokens, stats.sequences, stats.dropped_tokens) == (3, 9, 2, 1)


def test_packed_dataset_is_cached_and_memory_mapped(tokenizer, tmp_path):
    rng = np.random.default_rng(1)
    documents = [" ".join(rng.choice(WORDS, size=rng.integers(3, 30))) for _ in range(300)]
    corpus = write_corpus({"text": documents}, tmp_path / "corpus", validation_fraction=0.2)
    train = packed_dataset(corpus, tokenizer, "train", seq_len=16)
    assert isinstance(train.sequences, np.memmap) and train.seq_len == 16 and len(train) > 100
    assert train.path.parent == tmp_path / "corpus" / "packed"
    restored = pickle.loads(pickle.dumps(train))  # how DataLoader workers receive it: the path, not the data
    assert len(pickle.dumps(train)) < 1000 and torch.equal(restored[5], train[5])
    item = train[0]
    assert item.dtype == torch.int64 and item.shape == (16,)
    assert packed_dataset(corpus, tokenizer, "train", seq_len=16).path == train.path  # a cache hit
    assert train.path.with_suffix(".json").is_file()
    validation = packed_dataset(corpus, tokenizer, "validation", seq_len=16)
    longer = packed_dataset(corpus, tokenizer, "train", seq_len=32)
    assert len({train.path, validation.path, longer.path}) == 3  # the key covers split and seq_len
    tokens = lambda dataset: int(sum((dataset[i] != tokenizer.sep_token_id).sum() for i in range(len(dataset))))  # noqa: E731
    words = sum(len(document.split()) for document in documents)
    assert tokens(train) + tokens(validation) <= words  # every word is one token; only remainders are dropped
    assert tokens(train) + tokens(validation) > words - 2 * 16
    with pytest.raises(ValueError, match="fewer than one sequence"):
        packed_dataset(corpus, tokenizer, "validation", seq_len=100_000)
    with pytest.raises(ValueError, match=r"expected \(sequences, seq_len\)"):
        np.save(tmp_path / "flat.npy", np.zeros(5, dtype=np.uint16))
        PackedDataset(tmp_path / "flat.npy")


def _random_batch(batch: int, length: int, special_positions: int, generator: torch.Generator):
    """Tokens in [10, 100) with ``special_positions`` random positions per row set to special ids 0..3."""
    input_ids = torch.randint(10, 100, (batch, length), generator=generator)
    for row in range(batch):
        count = row % (special_positions + 1)  # rows with different numbers of special tokens
        positions = torch.randperm(length, generator=generator)[:count]
        input_ids[row, positions] = torch.randint(0, 4, (count,), generator=generator)
    return input_ids


def test_masking_counts_are_exact_per_sequence():
    generator = torch.Generator().manual_seed(0)
    input_ids = _random_batch(64, 128, special_positions=9, generator=generator)
    special = input_ids < 4
    replacements = torch.arange(500, 600)  # disjoint from the inputs, so every replacement is visible
    masked, labels = mask_tokens(input_ids, special, 3, replacements, MaskingConfig(), generator)
    selected = labels != IGNORE_INDEX
    for row in range(len(input_ids)):
        maskable = int((~special[row]).sum())
        expected = round(0.25 * maskable)
        assert int(selected[row].sum()) == expected
        assert int((masked[row] == 3)[selected[row]].sum()) == round(0.8 * expected)
        assert int((masked[row] >= 500).sum()) == round(0.1 * expected)
        unchanged = expected - round(0.8 * expected) - round(0.1 * expected)
        assert int((selected[row] & (masked[row] == input_ids[row])).sum()) == unchanged
    assert not selected[special].any()  # special tokens are never selected
    assert torch.equal(labels[selected], input_ids[selected])
    assert torch.equal(masked[~selected], input_ids[~selected])  # nothing else changes


def test_masking_is_uniform_over_positions():
    generator = torch.Generator().manual_seed(1)
    input_ids = torch.randint(10, 100, (4096, 32), generator=generator)
    masked, labels = mask_tokens(input_ids, input_ids < 0, 3, torch.arange(10, 100), MaskingConfig(), generator)
    rate = (labels != IGNORE_INDEX).float().mean(0)
    assert torch.allclose(rate, torch.full((32,), 0.25), atol=0.03)
    mask_share = (masked == 3).sum() / (labels != IGNORE_INDEX).sum()
    assert abs(float(mask_share) - 0.75) < 1e-6  # round(0.8 * 8) = 6 of 8 per row of 32


def test_masking_config_is_validated():
    with pytest.raises(ValueError, match="mlm_probability"):
        MaskingConfig(mlm_probability=1.5)
    with pytest.raises(ValueError, match="sum <= 1"):
        MaskingConfig(mask_fraction=0.8, random_fraction=0.3)


def test_collator_is_deterministic_and_never_inserts_special_tokens(tokenizer):
    rng = np.random.default_rng(2)
    sequences = [torch.from_numpy(rng.integers(7, len(tokenizer), size=64)) for _ in range(32)]
    sequences[0][10] = tokenizer.sep_token_id
    first = MLMCollator(tokenizer, seed=5)(sequences)
    again = MLMCollator(tokenizer, seed=5)(sequences)
    other = MLMCollator(tokenizer, seed=6)(sequences)
    assert all(torch.equal(first[key], again[key]) for key in first)
    assert not torch.equal(first["labels"], other["labels"])
    assert set(first) == {"input_ids", "attention_mask", "labels"}
    assert first["input_ids"].shape == (32, 64) and first["attention_mask"].all()
    assert first["labels"][0, 10] == IGNORE_INDEX and first["input_ids"][0, 10] == tokenizer.sep_token_id
    changed = first["input_ids"] != torch.stack(sequences)
    inserted = first["input_ids"][changed & (first["input_ids"] != tokenizer.mask_token_id)]
    assert len(inserted) > 0 and bool((inserted >= 7).all())  # random replacements are ordinary tokens
    restored = pickle.loads(pickle.dumps(MLMCollator(tokenizer, seed=5)))  # as DataLoader workers get it
    assert torch.equal(restored(sequences)["labels"], first["labels"])


def test_collator_in_a_dataloader(tokenizer):
    sequences = [torch.arange(7, 71) for _ in range(10)]
    batches = list(DataLoader(sequences, batch_size=4, collate_fn=MLMCollator(tokenizer)))
    assert [batch["input_ids"].shape for batch in batches] == [(4, 64), (4, 64), (2, 64)]
    assert all(int((batch["labels"] != IGNORE_INDEX).sum(1)[0]) == 16 for batch in batches)


def test_mask_rows_gives_each_row_its_own_mask_whatever_the_batch(tokenizer):
    collator = MLMCollator(tokenizer)
    generator = torch.Generator().manual_seed(3)
    ids = torch.randint(len(tokenizer.all_special_ids), len(tokenizer), (6, 40), generator=generator)

    def seeded(seeds):
        return [torch.Generator().manual_seed(seed) for seed in seeds]

    inputs, labels = collator.mask_rows(ids, seeded(range(6)))
    alone_inputs, alone_labels = collator.mask_rows(ids[4:5], seeded([4]))
    assert torch.equal(alone_inputs, inputs[4:5]) and torch.equal(alone_labels, labels[4:5])
    assert ((labels != -100).sum(1) == 10).all()  # round(25% of 40) per row
    assert not torch.equal(labels[0] != -100, labels[1] != -100)  # different seeds, different positions
