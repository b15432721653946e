"""Text from a pretrained causal decoder folder (``ultrafastbert generate``): every mistake is found before the
weights load, and tokens are printed as they are produced.

A prompt is encoded without the tokenizer's template and after the end-of-text token the model was pretrained
with (``<sep>`` for the corpus tokenizer: every packed document ends with it), so the model continues it as the
start of a document, as it saw documents start in pretraining; generation stops at the next end-of-text token or
after ``max_new_tokens``.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, TextStreamer

from ..model import load_tokenizer
from .config import GenerateConfig

# the class names of transformers' causal language models (``...ForCausalLM``; GPT-2's ``GPT2LMHeadModel``)
CAUSAL_LM_SUFFIXES = ("ForCausalLM", "LMHeadModel")


@dataclass
class GeneratedText:
    text: str  # the prompt as the tokenizer reads it, and its continuation
    prompt_tokens: int
    new_tokens: int
    seconds: float


def holds_causal_lm(model_dir: str | Path) -> bool:
    """Whether the model folder ``model_dir`` was saved from a causal LM (by its ``config.json``'s architectures)."""
    return _is_causal_lm(_folder_config(model_dir))


def _folder_config(model_dir: str | Path) -> dict[str, Any]:
    return json.loads((Path(model_dir) / "config.json").read_text(encoding="utf-8"))


def _is_causal_lm(config: dict[str, Any]) -> bool:
    return any(name.endswith(CAUSAL_LM_SUFFIXES) for name in config.get("architectures") or [])


def decoder_config(model_dir: str | Path) -> dict[str, Any]:
    """``config.json`` of the model folder ``model_dir``; ``ValueError`` unless it holds a causal decoder."""
    config = _folder_config(model_dir)
    if not _is_causal_lm(config):
        architectures = config.get("architectures") or []
        held = ", ".join(architectures) or f"a {config.get('model_type', 'model')} without a language-model head"
        raise ValueError(
            f"{model_dir} holds {held}, not a causal decoder: generate continues text with a decoder, such as one "
            "pretrained with `ultrafastbert pretrain --preset tiny-gpt-fff ...` (fill-mask serves masked LMs)"
        )
    return config


def _context(config: dict[str, Any]) -> int | None:
    return config.get("max_position_embeddings", config.get("n_positions"))


def _end_of_text(config: dict[str, Any]) -> int | None:
    eos = config.get("eos_token_id")
    return eos[0] if isinstance(eos, list) and eos else eos if isinstance(eos, int) else None


def prompt_ids(model_dir: str | Path, prompt: str, config: GenerateConfig) -> tuple[list[int], Any]:
    """The token ids to start from (the end-of-text token, then the prompt's) and the folder's tokenizer;
    ``ValueError`` for a folder without a decoder, an empty prompt, or a prompt and ``max_new_tokens`` past the
    model's context. Reads ``config.json`` and the tokenizer only: no weights."""
    if not prompt.strip():
        raise ValueError("the prompt is empty: give the text to continue")
    folder_config = decoder_config(model_dir)
    tokenizer = load_tokenizer(model_dir)
    ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    if not ids:
        raise ValueError(f"the prompt {prompt!r} has no tokens the model's tokenizer keeps (it keeps ASCII text)")
    start = _end_of_text(folder_config)
    ids = ([start] if start is not None else []) + ids
    context = _context(folder_config)
    if context is not None and len(ids) >= context:
        raise ValueError(
            f"the prompt is {len(ids)} tokens, the model's context only {context}: shorten it, leaving room for the "
            "new tokens"
        )
    if context is not None and len(ids) + config.max_new_tokens > context:
        raise ValueError(
            f"the prompt ({len(ids)} tokens) and --max-new-tokens {config.max_new_tokens} exceed the model's context "
            f"of {context} tokens: ask for at most {context - len(ids)} new tokens or shorten the prompt"
        )
    return ids, tokenizer


def generate_text(model_dir: str | Path, prompt: str, config: GenerateConfig, stream: bool = True) -> GeneratedText:
    """Continue ``prompt`` with the causal decoder in ``model_dir`` per ``config``, printing the text to stdout as
    tokens are produced when ``stream``. Everything :func:`prompt_ids` checks fails before the weights load."""
    ids, tokenizer = prompt_ids(model_dir, prompt, config)
    model = AutoModelForCausalLM.from_pretrained(str(model_dir)).eval()  # the package has registered its families
    # transformers' streamer prints the prompt, then each word as soon as it is complete
    streamer = TextStreamer(tokenizer, skip_prompt=False, skip_special_tokens=True) if stream else None
    sampling = {name: value for name, value in config.sampling_settings().items() if value is not None}
    torch.manual_seed(config.seed)
    started = time.perf_counter()
    output = model.generate(
        torch.tensor([ids]),
        attention_mask=torch.ones(1, len(ids), dtype=torch.long),
        max_new_tokens=config.max_new_tokens,
        do_sample=config.do_sample,
        pad_token_id=tokenizer.pad_token_id,
        streamer=streamer,
        **sampling,
    )
    seconds = time.perf_counter() - started
    return GeneratedText(
        text=tokenizer.decode(output[0], skip_special_tokens=True),
        prompt_tokens=len(ids),
        new_tokens=output.shape[1] - len(ids),
        seconds=seconds,
    )
