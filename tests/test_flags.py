"""Command-line flags derived from dataclasses: names, types, defaults, switches, tuples, optionals and help."""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from typing import Literal

import pytest

from ultrafastbert.flags import (
    DefaultsHelpFormatter,
    add_flags,
    check_fields,
    fraction,
    from_flags,
    positive,
    positive_int,
)


def even(text: str) -> int:
    if int(text) % 2:
        raise ValueError(f"even numbers only, not {text}")
    return int(text)


@dataclass
class Nested:
    value: int = 1


@dataclass
class Example:
    output_dir: str = field(metadata={"flag": "--output", "help": "where to write"})
    micro_batch: int = field(default=128, metadata={"help": "sequences per pass"})
    final_batch: int = field(default=8192, metadata={"flag": "--batch"})
    lr: float = field(default=1e-3, metadata={"help": "peak rate, 100% at the peak"})
    name: str = "tiny"
    head: Literal["classification", "mlm"] = "classification"
    max_steps: int | None = None
    bf16: bool = False
    compiled: bool = field(default=True, metadata={"flag": "--no-compile"})
    plot: bool = True
    tokens: tuple[int, ...] = (1, 128)
    train_tokens: tuple[int, ...] = field(default=(128,), metadata={"nargs": "*"})
    betas: tuple[float, float] = (0.9, 0.98)
    corpus: list[str] = field(default_factory=list, metadata={"nargs": "*"})
    threads: tuple[int, ...] = field(default=(), metadata={"type": even})
    nested: Nested = field(default_factory=Nested)


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(formatter_class=DefaultsHelpFormatter)
    add_flags(parser, Example)
    return parser.parse_args(argv)


def test_defaults_round_trip():
    config = from_flags(Example, parse("--output", "run"))
    assert config == Example(output_dir="run")
    assert isinstance(config.tokens, tuple) and isinstance(config.corpus, list)


def test_names_types_and_values():
    args = ["--output", "run", "--micro-batch", "8", "--batch", "16", "--lr", "0.5", "--name", "big"]
    args += ["--head", "mlm", "--max-steps", "3", "--tokens", "4", "5", "--train-tokens", "--betas", "0.8", "0.9"]
    args += ["--corpus", "a.txt", "b.txt", "--threads", "2", "4"]
    config = from_flags(Example, parse(*args))
    assert (config.micro_batch, config.final_batch, config.lr, config.name) == (8, 16, 0.5, "big")
    assert (config.head, config.max_steps) == ("mlm", 3)
    assert (config.tokens, config.train_tokens, config.betas) == ((4, 5), (), (0.8, 0.9))
    assert (config.corpus, config.threads) == (["a.txt", "b.txt"], (2, 4))


def test_switches():
    config = from_flags(Example, parse("--output", "run", "--bf16", "--no-compile", "--no-plot"))
    assert (config.bf16, config.compiled, config.plot) == (True, False, False)


def test_nested_dataclasses_come_from_the_caller():
    assert from_flags(Example, parse("--output", "run"), nested=Nested(5)).nested == Nested(5)
    with pytest.raises(SystemExit):
        parse("--output", "run", "--nested", "5")


def test_bad_values_are_refused_with_the_reason(capsys):
    with pytest.raises(SystemExit):
        parse()  # --output is required: the field has no default
    assert "--output" in capsys.readouterr().err
    for argv, reason in (
        (("--head", "seq"), "invalid choice"),
        (("--micro-batch", "x"), "invalid int value"),
        (("--betas", "0.9"), "expected 2 arguments"),
        (("--threads", "3"), "even numbers only, not 3"),
    ):
        with pytest.raises(SystemExit):
            parse("--output", "run", *argv)
        assert reason in capsys.readouterr().err


def test_help_shows_text_and_defaults(capsys):
    with pytest.raises(SystemExit):
        parse("--help")
    text = " ".join(capsys.readouterr().out.split())
    assert "--micro-batch MICRO_BATCH sequences per pass (default: 128)" in text
    assert "--batch BATCH (default: 8192)" in text
    assert "peak rate, 100% at the peak (default: 0.001)" in text
    assert "--tokens TOKENS [TOKENS ...] (default: 1 128)" in text
    assert "--head {classification,mlm} (default: classification)" in text
    assert "--output OUTPUT where to write" in text and "(default: None)" not in text
    assert "--no-compile" in text and "(default: True)" not in text and "(default: False)" not in text


def test_unsupported_field_types_are_an_error():
    @dataclass
    class Unsupported:
        table: dict[str, int] = field(default_factory=dict)

    with pytest.raises(TypeError, match=r"Unsupported\.table"):
        add_flags(argparse.ArgumentParser(), Unsupported)


def test_choices_from_metadata_apply_to_each_element():
    @dataclass
    class Pick:
        shapes: tuple[str, ...] = field(default=("a",), metadata={"choices": ("a", "b")})

    parser = argparse.ArgumentParser()
    add_flags(parser, Pick)
    assert from_flags(Pick, parser.parse_args(["--shapes", "b", "a"])).shapes == ("b", "a")
    with pytest.raises(SystemExit):
        parser.parse_args(["--shapes", "c"])


@dataclass
class Checked:
    epochs: float = field(default=1.0, metadata={"check": positive})
    share: float = field(default=0.5, metadata={"check": fraction})
    cap: int | None = field(default=None, metadata={"check": positive})
    sizes: tuple[int, ...] = field(default=(1,), metadata={"check": positive})

    def __post_init__(self) -> None:
        check_fields(self)


def test_float_flags_refuse_nan_and_infinity(capsys):
    for value in ("nan", "inf", "-inf"):
        with pytest.raises(SystemExit) as refused:
            parse("--output", "run", f"--lr={value}")
        assert refused.value.code == 2 and "argument --lr: must be a finite number" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parse("--output", "run", "--betas", "0.9", "nan")
    assert "argument --betas: must be a finite number, got nan" in capsys.readouterr().err


def test_field_checks_refuse_nonsense_on_the_command_line_and_in_python(capsys):
    parser = argparse.ArgumentParser()
    add_flags(parser, Checked)
    for argv, reason in (
        (("--epochs", "0"), "argument --epochs: must be > 0, got 0.0"),
        (("--epochs", "-2"), "argument --epochs: must be > 0, got -2.0"),
        (("--share", "1.5"), "argument --share: must lie in [0, 1], got 1.5"),
        (("--cap", "0"), "argument --cap: must be > 0, got 0"),
        (("--cap", "x"), "argument --cap: invalid int value: 'x'"),
        (("--sizes", "4", "-1"), "argument --sizes: must be > 0, got -1"),
    ):
        with pytest.raises(SystemExit):
            parser.parse_args(argv)
        assert reason in capsys.readouterr().err
    parsed = from_flags(Checked, parser.parse_args(["--epochs", "0.5", "--cap", "3"]))
    assert (parsed.epochs, parsed.cap) == (0.5, 3)
    with pytest.raises(ValueError, match=r"Checked\.epochs must be > 0, got 0"):
        Checked(epochs=0)
    with pytest.raises(ValueError, match=r"Checked\.sizes must be > 0, got 0"):
        Checked(sizes=(2, 0))
    assert Checked(cap=None).cap is None  # None is "no cap", never checked


def test_positive_int_is_a_type_for_plain_flags(capsys):
    parser = argparse.ArgumentParser()
    parser.add_argument("--top-k", type=positive_int, default=5)
    assert parser.parse_args(["--top-k", "2"]).top_k == 2
    for value in ("0", "-1"):
        with pytest.raises(SystemExit):
            parser.parse_args(["--top-k", value])
        assert f"argument --top-k: must be > 0, got {value}" in capsys.readouterr().err
