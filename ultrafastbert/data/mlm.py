"""Pretraining batches: documents tokenised and packed into fixed-length sequences, masked per batch for MLM.

As in the original recipe, every document is tokenised with the single-text template (``A <sep>``), the token
stream is cut into sequences of ``seq_len`` (documents run across sequence borders, the last partial sequence is
dropped), and there is no padding. The packed array is cached as a ``.npy`` file read through a memory map, keyed
by the corpus, the tokenizer and the packing settings.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from tokenizers import Tokenizer
from torch.utils.data import Dataset, get_worker_info
from transformers import PreTrainedTokenizerFast

from .corpus import Corpus
from .tokenizer import tokenizer_fingerprint

PACKING_FORMAT_VERSION = 1
IGNORE_INDEX = -100  # label of unmasked positions: torch.nn.CrossEntropyLoss's default ignore_index


@dataclass
class PackingStats:
    """What packing one split produced."""

    documents: int
    tokens: int
    sequences: int
    dropped_tokens: int  # the incomplete last sequence


def pack_documents(
    documents: Sequence[str], tokenizer: PreTrainedTokenizerFast, seq_len: int = 128, batch_size: int = 2048
) -> tuple[np.ndarray, PackingStats]:
    """Tokenise ``documents`` (each ends with ``<sep>``), concatenate, cut into rows: ``(N, seq_len)`` + stats."""
    if seq_len < 2:
        raise ValueError(f"seq_len must be at least 2, got {seq_len}")
    backend = Tokenizer.from_str(tokenizer.backend_tokenizer.to_str())  # a copy without truncation or padding
    backend.no_truncation()
    backend.no_padding()
    dtype = np.uint16 if len(tokenizer) <= np.iinfo(np.uint16).max + 1 else np.int32
    chunks = []
    for start in range(0, len(documents), batch_size):
        encodings = backend.encode_batch_fast(list(documents[start : start + batch_size]))
        chunks.append(np.fromiter(itertools.chain.from_iterable(e.ids for e in encodings), dtype=dtype))
    stream = np.concatenate(chunks) if chunks else np.zeros(0, dtype=dtype)
    sequences = len(stream) // seq_len
    stats = PackingStats(len(documents), len(stream), sequences, len(stream) - sequences * seq_len)
    return stream[: sequences * seq_len].reshape(sequences, seq_len), stats


def packed_path(
    corpus: Corpus,
    tokenizer: PreTrainedTokenizerFast,
    split: str = "train",
    seq_len: int = 128,
    cache_dir: Path | str | None = None,
    shuffle_seed: int = 0,
) -> Path:
    """The cached packed array of ``split`` (built if missing): ``<cache>/packed/<key>.npy`` plus ``<key>.json``.

    Documents are shuffled (seeded) before packing so that one sequence mixes sources instead of holding
    alphabetical neighbours of one dictionary. ``cache_dir`` defaults to the corpus's own folder.
    """
    cache = Path(cache_dir) if cache_dir is not None else corpus.root
    parts = (
        PACKING_FORMAT_VERSION,
        corpus.content_hash,
        tokenizer_fingerprint(tokenizer),
        seq_len,
        split,
        shuffle_seed,
    )
    key = hashlib.sha256("|".join(map(str, parts)).encode()).hexdigest()[:16]
    path = cache / "packed" / f"{split}-{seq_len}-{key}.npy"
    if path.is_file():
        return path
    documents = list(corpus.documents(split))
    order = np.random.default_rng(shuffle_seed).permutation(len(documents))
    array, stats = pack_documents([documents[index] for index in order], tokenizer, seq_len)
    if stats.sequences == 0:
        raise ValueError(
            f"the {split} split of corpus {corpus.root} has {stats.tokens} tokens, fewer than one sequence of "
            f"{seq_len}; give more text (or a larger validation_fraction for the validation split)"
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial.npy")
    np.save(partial, array)
    path.with_suffix(".json").write_text(json.dumps({"split": split, "seq_len": seq_len, **asdict(stats)}) + "\n")
    partial.rename(path)  # last: a complete file is the cache hit
    return path


class PackedDataset(Dataset):
    """Fixed-length token sequences read from a packed ``.npy`` through a memory map; items are ``(seq_len,)`` long."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self.sequences = np.load(self.path, mmap_mode="r")
        if self.sequences.ndim != 2:
            raise ValueError(f"{self.path} holds shape {self.sequences.shape}, expected (sequences, seq_len)")

    def __getstate__(self) -> dict:
        return {"path": self.path}  # DataLoader workers reopen the map instead of receiving a copy of the data

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["path"])

    @property
    def seq_len(self) -> int:
        return self.sequences.shape[1]

    def __len__(self) -> int:
        return self.sequences.shape[0]

    def __getitem__(self, index: int) -> torch.Tensor:
        return torch.from_numpy(self.sequences[index].astype(np.int64))


def packed_dataset(
    corpus: Corpus,
    tokenizer: PreTrainedTokenizerFast,
    split: str = "train",
    seq_len: int = 128,
    cache_dir: Path | str | None = None,
    shuffle_seed: int = 0,
) -> PackedDataset:
    """The packed :class:`PackedDataset` of ``split``, from the cache or built once (see :func:`packed_path`)."""
    return PackedDataset(packed_path(corpus, tokenizer, split, seq_len, cache_dir, shuffle_seed))


# ---------------------------------------------------------------- masking


@dataclass
class MaskingConfig:
    """crammedBERT's MLM objective: a fixed share of each sequence's tokens is predicted (80/10/10 rule)."""

    mlm_probability: float = 0.25  # share of the non-special tokens selected for prediction, a fixed count
    mask_fraction: float = 0.8  # of the selected: replaced by <mask>
    random_fraction: float = 0.1  # of the selected: replaced by a random token; the rest stay unchanged

    def __post_init__(self) -> None:
        if not 0.0 <= self.mlm_probability <= 1.0:
            raise ValueError(f"mlm_probability must be in [0, 1], got {self.mlm_probability}")
        if self.mask_fraction < 0 or self.random_fraction < 0 or self.mask_fraction + self.random_fraction > 1:
            raise ValueError(f"need mask_fraction, random_fraction >= 0 with sum <= 1, got {self}")


def mask_tokens(
    input_ids: torch.Tensor,
    special_mask: torch.Tensor,
    mask_token_id: int,
    replacement_ids: torch.Tensor,
    config: MaskingConfig,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mask ``input_ids`` ``(B, S)``; returns (masked inputs, labels with ``-100`` where nothing is predicted).

    Per sequence exactly ``round(p * n)`` of its ``n`` non-special tokens are selected (a fixed count, not a
    Bernoulli draw, as in crammedBERT); of those ``round(0.8 k)`` become ``<mask>``, ``round(0.1 k)`` a token drawn
    uniformly from ``replacement_ids`` and the rest stay. Python's ``round`` (half to even) is used throughout.
    """
    batch, length = input_ids.shape
    selected_count = torch.round((~special_mask).sum(1) * config.mlm_probability)
    masked_count = torch.round(selected_count * config.mask_fraction)
    random_count = torch.minimum(torch.round(selected_count * config.random_fraction), selected_count - masked_count)
    # a uniformly random order of each row's maskable positions; special tokens sort last
    scores = torch.rand(batch, length, generator=generator)
    scores[special_mask] = 2.0
    rank = torch.empty_like(input_ids)
    rank.scatter_(1, scores.argsort(dim=1), torch.arange(length).expand(batch, length).contiguous())
    selected = rank < selected_count[:, None]
    to_mask = rank < masked_count[:, None]
    to_random = selected & ~to_mask & (rank < (masked_count + random_count)[:, None])
    labels = torch.where(selected, input_ids, IGNORE_INDEX)
    random_tokens = replacement_ids[torch.randint(len(replacement_ids), (batch, length), generator=generator)]
    masked = torch.where(to_mask, mask_token_id, input_ids)
    masked = torch.where(to_random, random_tokens, masked)
    return masked, labels


class MLMCollator:
    """Stacks packed sequences and masks them: ``{"input_ids", "attention_mask", "labels"}``, all ``(B, S)``.

    Deterministic: masks come from a ``torch.Generator`` seeded with ``seed``; inside ``DataLoader`` workers each
    worker seeds its own generator from ``(seed, worker id)``, so runs repeat for a fixed ``num_workers``.
    Random replacements never draw special tokens.
    """

    def __init__(self, tokenizer: PreTrainedTokenizerFast, config: MaskingConfig | None = None, seed: int = 0) -> None:
        self.config = config or MaskingConfig()
        self.seed = seed
        self.mask_token_id = tokenizer.mask_token_id
        self.pad_token_id = tokenizer.pad_token_id
        if self.mask_token_id is None or self.pad_token_id is None:
            raise ValueError("the tokenizer needs a mask token and a pad token for MLM")
        self.special_ids = torch.tensor(sorted(set(tokenizer.all_special_ids)))
        vocabulary = torch.arange(len(tokenizer))
        self.replacement_ids = vocabulary[~torch.isin(vocabulary, self.special_ids)]
        self._generator: torch.Generator | None = None
        self._worker_id: int | None = None

    def generator(self) -> torch.Generator:
        """This process's generator (the main process's, or one per ``DataLoader`` worker)."""
        info = get_worker_info()
        worker_id = -1 if info is None else info.id
        if self._generator is None or worker_id != self._worker_id:
            self._generator = torch.Generator().manual_seed(self.seed * 1_000_003 + worker_id + 1)
            self._worker_id = worker_id
        return self._generator

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_generator": None, "_worker_id": None}  # workers start their own stream

    def mask_rows(
        self, input_ids: torch.Tensor, generators: Sequence[torch.Generator]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Mask each row of ``input_ids`` ``(B, S)`` with its own generator; returns (inputs, labels).

        The training loop seeds one generator per sequence from its global position, so a sequence's mask does
        not depend on the batch or process it lands in (exact resume, torchrun equal to one process).
        """
        special = torch.isin(input_ids, self.special_ids)
        rows = [
            mask_tokens(
                input_ids[i : i + 1],
                special[i : i + 1],
                self.mask_token_id,
                self.replacement_ids,
                self.config,
                generator,
            )
            for i, generator in enumerate(generators)
        ]
        return torch.cat([inputs for inputs, _ in rows]), torch.cat([labels for _, labels in rows])

    def __call__(self, sequences: Sequence[torch.Tensor]) -> dict[str, torch.Tensor]:
        input_ids = torch.stack(list(sequences)).long()
        special_mask = torch.isin(input_ids, self.special_ids)
        masked, labels = mask_tokens(
            input_ids, special_mask, self.mask_token_id, self.replacement_ids, self.config, self.generator()
        )
        return {"input_ids": masked, "attention_mask": (input_ids != self.pad_token_id).long(), "labels": labels}
