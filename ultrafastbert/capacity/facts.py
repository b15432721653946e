"""The facts the capacity benchmark teaches: random attributes of synthetic people, and WordNet lemmas' lexicographer
files. Each set is a tensor of token rows with the answers as MLM labels (``-100`` where nothing is asked).

Synthetic (nothing to infer, so every recalled fact is ``log2 V`` bits stored): person ``p`` is a distinct pair of a
first and a last name token, each drawn from a pool of ``name_pool``; each of the ``K`` attributes holds one of ``V``
values, uniform and independent. One row per person asks all of them at once::

    [first] [last] [attr_1] ... [attr_K]      labels: -100 -100 value_1 ... value_K

so that the model answers ``[first] [last] [attr_k] -> value_k`` at the position of ``attr_k``, and each fact costs
``(2 + K) / K`` tokens of compute instead of four.

WordNet (real facts, partly inferable from spelling): a lemma of at most ``max_letters`` letters a-z whose every
synset lies in one lexicographer file (``noun.animal``, ``verb.motion``, ...), spelt in letters after a query token
that is asked the file::

    [?] l e m m a [pad] ...                   labels: lexname -100 ...
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from ..data.debian import LEXNAMES, Synset

IGNORE = -100
PAD = 0
LETTERS = "abcdefghijklmnopqrstuvwxyz"


@dataclass
class FactSet:
    """Token rows ``(R, S)``, their attention mask ``(R, S)`` and labels ``(R, S)`` (``IGNORE`` where no fact is
    asked); ``vocab_size`` covers every id; ``values`` is the number of possible answers."""

    input_ids: Tensor
    attention_mask: Tensor
    labels: Tensor
    vocab_size: int
    values: int

    @property
    def facts(self) -> int:
        return int((self.labels != IGNORE).sum())

    @property
    def rows(self) -> int:
        return self.input_ids.shape[0]


def synthetic_facts(people: int, attributes: int, values: int, name_pool: int, seed: int) -> FactSet:
    """``people`` distinct people with ``attributes`` uniform random values each (ids: 0 pad, then first names,
    last names, attributes, values)."""
    if people > name_pool**2:
        raise ValueError(f"{people} people cannot have distinct names from {name_pool} x {name_pool} names")
    rng = np.random.default_rng(seed)
    names = rng.choice(name_pool * name_pool, size=people, replace=False)
    first, last = names // name_pool, names % name_pool
    answers = rng.integers(0, values, size=(people, attributes))
    first_id, last_id, attribute_id = 1, 1 + name_pool, 1 + 2 * name_pool
    value_id = attribute_id + attributes
    input_ids = np.empty((people, 2 + attributes), dtype=np.int64)
    input_ids[:, 0] = first_id + first
    input_ids[:, 1] = last_id + last
    input_ids[:, 2:] = attribute_id + np.arange(attributes)
    labels = np.full_like(input_ids, IGNORE)
    labels[:, 2:] = value_id + answers
    ids = torch.from_numpy(input_ids)
    return FactSet(ids, torch.ones_like(ids), torch.from_numpy(labels), value_id + values, values)


def wordnet_lexname_facts(synsets: list[Synset], max_letters: int) -> list[tuple[str, str]]:
    """``(lemma, lexname)`` for every lemma of at most ``max_letters`` letters a-z (and at least two) whose synsets
    all lie in one lexicographer file, in first-seen order."""
    files: dict[str, set[str]] = {}
    for synset in synsets:
        for word in synset.words:
            lemma = word.lower()
            if 2 <= len(lemma) <= max_letters and all(letter in LETTERS for letter in lemma):
                files.setdefault(lemma, set()).add(synset.lexname)
    return [(lemma, next(iter(names))) for lemma, names in files.items() if len(names) == 1]


def wordnet_fact_set(pairs: list[tuple[str, str]], max_letters: int) -> FactSet:
    """Rows ``[?] letters... [pad]...`` asking each lemma's file (ids: 0 pad, 1 query, letters, then files)."""
    query, letter_id, file_id = 1, 2, 2 + len(LETTERS)
    input_ids = torch.full((len(pairs), 1 + max_letters), PAD, dtype=torch.long)
    labels = torch.full_like(input_ids, IGNORE)
    for row, (lemma, lexname) in enumerate(pairs):
        input_ids[row, 0] = query
        input_ids[row, 1 : 1 + len(lemma)] = torch.tensor([letter_id + LETTERS.index(c) for c in lemma])
        labels[row, 0] = file_id + LEXNAMES.index(lexname)
    return FactSet(input_ids, (input_ids != PAD).long(), labels, file_id + len(LEXNAMES), len(LEXNAMES))


def split_wordnet(
    pairs: list[tuple[str, str]], trained: int, heldout: int, seed: int
) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """A seeded shuffle of ``pairs``: its first ``trained`` and the ``heldout`` after them (a smaller ``trained``
    is a prefix of a larger one; the held-out lemmas are the same for every ``trained`` up to the largest)."""
    if trained + heldout > len(pairs):
        raise ValueError(f"WordNet has {len(pairs)} usable lemmas, fewer than {trained} + {heldout} held out")
    order = np.random.default_rng(seed).permutation(len(pairs))
    shuffled = [pairs[index] for index in order]
    return shuffled[:trained], shuffled[len(pairs) - heldout :]
