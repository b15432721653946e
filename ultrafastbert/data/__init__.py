"""The data layer: corpus -> tokenizer -> packed, masked pretraining batches; finetuning tasks and their metrics.

``prepare_default_data`` wires the embedded default together in the one order that keeps evaluation text out of
pretraining: fetch the Debian packages, build (or reread) the local tasks' fixed splits, then build the corpus
without their evaluation texts.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ..lazy import lazy_exports
from .task_names import LOCAL_TASKS

if TYPE_CHECKING:
    from .corpus import Corpus, corpus_from_paths, load_corpus, normalize_text, read_hf_dataset
    from .debian import build_default_corpus
    from .metrics import compute_metrics
    from .mlm import MaskingConfig, MLMCollator, PackedDataset, mask_tokens, packed_dataset
    from .sources import DEFAULT_PACKAGES, PackageFetchError, cache_root, fetch_debian_packages
    from .tasks import (
        GLUE_TASKS,
        Example,
        SplitConfig,
        TaskCollator,
        TaskData,
        build_local_tasks,
        evaluation_texts,
        load_glue_task,
        load_local_task,
    )
    from .tokenizer import tokenizer_for_corpus, train_tokenizer

# The names below import their modules (numpy, torch, tokenizers) on first use: the command line reads the task
# names (``task_names.py``) without them.
__getattr__, __dir__ = lazy_exports(
    __name__,
    {
        ".debian": ("build_default_corpus",),
        ".corpus": (
            "Corpus",
            "corpus_from_paths",
            "load_corpus",
            "normalize_text",
            "read_hf_dataset",
        ),
        ".metrics": ("compute_metrics",),
        ".mlm": ("MaskingConfig", "MLMCollator", "PackedDataset", "mask_tokens", "packed_dataset"),
        ".sources": ("DEFAULT_PACKAGES", "PackageFetchError", "cache_root", "fetch_debian_packages"),
        ".tasks": (
            "GLUE_TASKS",
            "Example",
            "SplitConfig",
            "TaskCollator",
            "TaskData",
            "build_local_tasks",
            "evaluation_texts",
            "load_glue_task",
            "load_local_task",
        ),
        ".tokenizer": ("tokenizer_for_corpus", "train_tokenizer"),
    },
)


@dataclass
class DefaultData:
    """The embedded default: the pretraining corpus and the local tasks (their evaluation texts excluded from it)."""

    corpus: Corpus
    tasks: dict[str, TaskData]


def prepare_default_data(
    cache_dir: Path | str | None = None,
    validation_fraction: float = 0.01,
    split: SplitConfig | None = None,
    update_index: bool = False,
) -> DefaultData:
    """Fetch, clean and cache the default corpus and local tasks; later calls read the cache back.

    Raises :class:`PackageFetchError` (with the hint to use your own text files) where Debian's tools or mirror
    are unavailable. ``update_index`` lets the fetch run ``apt-get update`` once if a package is unknown.
    """
    from .debian import build_default_corpus
    from .sources import DEFAULT_PACKAGES, cache_root, fetch_debian_packages
    from .tasks import build_local_tasks, evaluation_texts

    cache = Path(cache_dir) if cache_dir is not None else cache_root()
    package_roots = fetch_debian_packages(DEFAULT_PACKAGES, cache, update_index)
    tasks = build_local_tasks(package_roots, cache, split)
    corpus = build_default_corpus(package_roots, cache, evaluation_texts(tasks.values()), validation_fraction)
    return DefaultData(corpus, tasks)


__all__ = [
    "DEFAULT_PACKAGES",
    "GLUE_TASKS",
    "LOCAL_TASKS",
    "Corpus",
    "DefaultData",
    "Example",
    "MLMCollator",
    "MaskingConfig",
    "PackageFetchError",
    "PackedDataset",
    "SplitConfig",
    "TaskCollator",
    "TaskData",
    "build_default_corpus",
    "build_local_tasks",
    "cache_root",
    "compute_metrics",
    "corpus_from_paths",
    "evaluation_texts",
    "fetch_debian_packages",
    "load_corpus",
    "load_glue_task",
    "load_local_task",
    "mask_tokens",
    "normalize_text",
    "packed_dataset",
    "prepare_default_data",
    "read_hf_dataset",
    "tokenizer_for_corpus",
    "train_tokenizer",
]
