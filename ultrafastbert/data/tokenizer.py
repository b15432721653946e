"""The WordPiece tokenizer of the original recipe, trained with ``tokenizers`` and saved for ``AutoTokenizer``.

Uncased ASCII WordPiece (32768 tokens by default) with the published model's special tokens and templates: a single
text is ``A <sep>`` (how pretraining documents are packed), a pair is ``<cls> A <sep> B <sep>``. ``<pad>`` is id 0
because the word embedding uses padding index 0.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import warnings
from collections.abc import Iterable
from pathlib import Path

from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

from ..model.crammedbert.tokenizer import SPECIAL_TOKENS, TOKENIZER_FILE, load_tokenizer
from .corpus import ASCII_WHITESPACE, Corpus

DEFAULT_VOCAB_SIZE = 32768
TOKENIZER_FORMAT_VERSION = 1


def build_normalizer() -> normalizers.Normalizer:
    """The original recipe's normaliser: lowercase, accents stripped, ASCII only (``corpus.normalize_text``)."""
    return normalizers.Sequence(
        [
            normalizers.Replace("``", '"'),
            normalizers.Replace("''", '"'),
            normalizers.NFD(),
            normalizers.Lowercase(),
            normalizers.StripAccents(),
            normalizers.Replace(Regex(r"[^\x00-\x7F]+"), ""),
            normalizers.Replace(Regex(ASCII_WHITESPACE), " "),
            normalizers.Strip(),
        ]
    )


def train_tokenizer(
    texts: Iterable[str],
    vocab_size: int = DEFAULT_VOCAB_SIZE,
    output_dir: Path | str | None = None,
    model_max_length: int = 128,
) -> PreTrainedTokenizerFast:
    """Train a WordPiece tokenizer on ``texts``; with ``output_dir``, save it loadable by ``AutoTokenizer``.

    A corpus too small for ``vocab_size`` gives a smaller vocabulary (with a warning): size models by
    ``len(tokenizer)``, not by the request.
    """
    if vocab_size <= len(SPECIAL_TOKENS):
        raise ValueError(f"vocab_size must exceed the {len(SPECIAL_TOKENS)} special tokens, got {vocab_size}")
    tokenizer = Tokenizer(models.WordPiece(unk_token=SPECIAL_TOKENS["unk_token"], continuing_subword_prefix="##"))
    tokenizer.normalizer = build_normalizer()
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.decoder = decoders.WordPiece(prefix="##")
    trainer = trainers.WordPieceTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS.values()),
        continuing_subword_prefix="##",
        show_progress=False,
    )
    seen = 0

    def counted(texts: Iterable[str]) -> Iterable[str]:
        nonlocal seen
        for text in texts:
            seen += bool(text.strip())
            yield text

    tokenizer.train_from_iterator(counted(texts), trainer=trainer)
    if not seen:
        raise ValueError("cannot train a tokenizer on an empty corpus")
    for index, token in enumerate(SPECIAL_TOKENS.values()):
        if tokenizer.token_to_id(token) != index:
            raise RuntimeError(f"special token {token} got id {tokenizer.token_to_id(token)}, expected {index}")
    if tokenizer.get_vocab_size() != vocab_size:
        warnings.warn(
            f"the corpus yields only {tokenizer.get_vocab_size()} of the {vocab_size} requested tokens", stacklevel=2
        )
    tokenizer.post_processor = processors.TemplateProcessing(
        single="$A <sep>",
        pair="<cls> $A <sep> $B <sep>",
        special_tokens=[(token, tokenizer.token_to_id(token)) for token in ("<cls>", "<sep>")],
    )
    wrapped = PreTrainedTokenizerFast(tokenizer_object=tokenizer, model_max_length=model_max_length, **SPECIAL_TOKENS)
    if output_dir is not None:
        wrapped.save_pretrained(str(output_dir))
        # tokenizer_config.json names the special tokens for transformers 5; this file does for older readers
        (Path(output_dir) / "special_tokens_map.json").write_text(json.dumps(SPECIAL_TOKENS, indent=2) + "\n")
    return wrapped


def tokenizer_fingerprint(tokenizer: PreTrainedTokenizerFast) -> str:
    """Hash of the full tokenizer definition (vocabulary, normaliser, templates): part of every cache key."""
    definition = json.loads(tokenizer.backend_tokenizer.to_str())
    return hashlib.sha256(json.dumps(definition, sort_keys=True).encode()).hexdigest()[:16]


def tokenizer_for_corpus(
    corpus: Corpus,
    vocab_size: int = DEFAULT_VOCAB_SIZE,
    cache_dir: Path | str | None = None,
    model_max_length: int = 128,
) -> PreTrainedTokenizerFast:
    """The tokenizer trained on ``corpus``'s training split, from the cache when it was trained before.

    Cached in ``<cache_dir>/tokenizers/wordpiece-v1-<corpus hash>-<vocab size>``; ``cache_dir`` defaults to the
    corpus's own folder, so what is derived from a corpus stays beside it.
    """
    cache = Path(cache_dir) if cache_dir is not None else corpus.root
    folder = cache / "tokenizers" / f"wordpiece-v{TOKENIZER_FORMAT_VERSION}-{corpus.content_hash}-{vocab_size}"
    if (folder / TOKENIZER_FILE).is_file():
        return load_tokenizer(folder)
    partial = folder.with_name(folder.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)  # left by an interrupted run
    tokenizer = train_tokenizer(corpus.documents("train"), vocab_size, partial, model_max_length)
    partial.rename(folder)
    return tokenizer
