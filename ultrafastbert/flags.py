"""Command-line flags derived from a config dataclass, so that a new field is one edit.

``add_flags(parser, Config)`` adds one flag per field: ``--micro-batch`` for ``micro_batch``, typed from the
annotation, with the field's default and ``field(metadata={"help": ...})`` as help. ``from_flags(Config, args)``
builds the dataclass back from the parsed namespace. Per-field ``metadata`` keys:

- ``help``: the help text; ``DefaultsHelpFormatter`` appends the default.
- ``flag``: the flag's name when it differs from the field's (``"--batch"`` for ``final_batch``); for a bool that
  defaults to ``True``, the name of the switch that turns it off (default ``--no-<name>``).
- ``type``: a converter from one command-line word to a value (or to one element of a tuple), in place of the
  annotation's; a ``ValueError`` it raises is shown to the user as the reason.
- ``nargs``: for tuples and lists, ``"*"`` to accept an empty list (default ``"+"``).
- ``choices``: the values accepted (for a tuple field: for each element).
- ``check``: a function of one parsed value that raises ``ValueError`` when the value makes no sense (``positive``,
  ``fraction``); argparse refuses such a flag with that message, and the dataclass can run the same checks on
  values given in Python with ``check_fields(self)`` in its ``__post_init__``.

Annotations understood: ``int``, ``float`` (finite only: ``nan`` and ``inf`` are refused), ``str``, ``bool``
(``store_true``, or ``--no-<name>`` when the default is ``True``), ``Literal[...]`` (choices), ``X | None``,
``tuple[X, ...]`` and ``list[X]`` (``nargs``) and ``tuple[X, Y]`` (a fixed count). Fields holding a dataclass are
not flags: the caller builds them (from their own flags) and passes them to ``from_flags``. Any other annotation is
a ``TypeError`` when the flags are added. For plain ``add_argument`` flags, ``flag_type(convert, *checks)`` makes
such a ``type`` from any converter, and ``positive_int`` is the one of a count.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import math
import types
import typing
from collections.abc import Callable
from typing import Any, Literal, TypeVar

T = TypeVar("T")

_SCALARS = (int, float, str)


@dataclasses.dataclass
class _FlagSpec:
    """How one field is read from the command line."""

    name: str
    kwargs: dict[str, Any]
    container: type | None  # tuple or list when the field holds several values


def _flag_name(field: dataclasses.Field) -> str:
    """The flag of ``field``: its ``metadata["flag"]``, else ``--`` and the field's name with dashes."""
    return field.metadata.get("flag", "--" + field.name.replace("_", "-"))


def _flag_fields(cls: type) -> list[tuple[dataclasses.Field, Any]]:
    """``(field, resolved annotation)`` of every field of ``cls`` that is a flag (not a nested dataclass)."""
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"{cls!r} is not a dataclass")
    hints = typing.get_type_hints(cls)
    return [
        (field, hints[field.name])
        for field in dataclasses.fields(cls)
        if field.init and not _is_dataclass_type(_strip_optional(hints[field.name]))
    ]


def _is_dataclass_type(annotation: Any) -> bool:
    return isinstance(annotation, type) and dataclasses.is_dataclass(annotation)


def _strip_optional(annotation: Any) -> Any:
    """``X`` for ``X | None``, else ``annotation``."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        members = [member for member in typing.get_args(annotation) if member is not type(None)]
        if len(members) == 1 and len(typing.get_args(annotation)) == 2:
            return members[0]
    return annotation


def _default(field: dataclasses.Field) -> Any:
    if field.default is not dataclasses.MISSING:
        return field.default
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return dataclasses.MISSING


def positive(value: float) -> None:
    """Field check: the value is > 0 (a count, a size, a duration)."""
    if not value > 0:
        raise ValueError(f"must be > 0, got {value}")


def fraction(value: float) -> None:
    """Field check: the value is a share, in [0, 1]."""
    if not 0 <= value <= 1:
        raise ValueError(f"must lie in [0, 1], got {value}")


def _finite(value: float) -> None:
    if not math.isfinite(value):
        raise ValueError(f"must be a finite number, got {value}")


def check_fields(instance: Any) -> None:
    """Run the ``check`` of every field of the dataclass ``instance`` on its value (each element of a tuple or
    list; ``None`` is not checked): a ``ValueError`` naming the field, for values given in Python."""
    for field in dataclasses.fields(instance):
        check = field.metadata.get("check")
        value = getattr(instance, field.name)
        if check is None or value is None:
            continue
        for element in value if isinstance(value, (tuple, list)) else (value,):
            try:
                check(element)
            except ValueError as error:
                raise ValueError(f"{type(instance).__name__}.{field.name} {error}") from None


def flag_type(convert: Callable[[str], Any], *checks: Callable[[Any], None]) -> Callable[[str], Any]:
    """An argparse ``type``: ``convert`` followed by ``checks``, whose ``ValueError`` messages reach the user
    (argparse otherwise says only "invalid value")."""

    def parse(text: str) -> Any:
        try:
            value = convert(text)
        except ValueError as error:
            if convert in _SCALARS:  # the builtins' own messages ("could not convert string to float") say less
                raise argparse.ArgumentTypeError(f"invalid {convert.__name__} value: {text!r}") from None
            raise argparse.ArgumentTypeError(str(error)) from None
        try:
            for check in checks:
                check(value)
        except ValueError as error:
            raise argparse.ArgumentTypeError(str(error)) from None
        return value

    parse.__name__ = getattr(convert, "__name__", "value")
    return parse


positive_int = flag_type(int, positive)


def _scalar_kwargs(annotation: Any, field: dataclasses.Field, cls: type) -> dict[str, Any]:
    """``type`` / ``choices`` for one value of ``annotation``."""
    checks = [field.metadata["check"]] if "check" in field.metadata else []
    if annotation is float:
        checks.insert(0, _finite)
    if "type" in field.metadata:
        return {"type": flag_type(field.metadata["type"], *checks)}
    if "choices" in field.metadata and annotation in _SCALARS:
        return {"type": annotation, "choices": tuple(field.metadata["choices"])}
    if typing.get_origin(annotation) is Literal:
        choices = typing.get_args(annotation)
        return {"type": type(choices[0]), "choices": choices}
    if annotation in _SCALARS:
        return {"type": flag_type(annotation, *checks) if checks else annotation}
    raise TypeError(f"{cls.__name__}.{field.name}: no command-line flag for a field of type {annotation!r}")


def _spec(field: dataclasses.Field, annotation: Any, cls: type) -> _FlagSpec:
    annotation = _strip_optional(annotation)
    name = _flag_name(field)
    default = _default(field)
    kwargs: dict[str, Any] = {"dest": field.name, "help": field.metadata.get("help", "").replace("%", "%%")}
    if default is dataclasses.MISSING:
        kwargs["required"] = True
    else:
        kwargs["default"] = default
    if annotation is bool:
        if default is True:
            name = field.metadata.get("flag", "--no-" + field.name.replace("_", "-"))
            return _FlagSpec(name, {**kwargs, "action": "store_false"}, None)
        return _FlagSpec(name, {**kwargs, "action": "store_true"}, None)
    container = None
    origin, arguments = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (tuple, list):
        container = origin
        if origin is list or (len(arguments) == 2 and arguments[1] is Ellipsis):
            kwargs["nargs"] = field.metadata.get("nargs", "+")
        elif arguments and len(set(arguments)) == 1:
            kwargs["nargs"] = len(arguments)
        else:
            raise TypeError(f"{cls.__name__}.{field.name}: tuples as flags hold one type, not {annotation!r}")
        annotation = arguments[0]
    kwargs |= _scalar_kwargs(annotation, field, cls)
    if "choices" not in kwargs:
        kwargs["metavar"] = name.lstrip("-").replace("-", "_").upper()
    return _FlagSpec(name, kwargs, container)


def add_flags(parser: argparse.ArgumentParser | argparse._ArgumentGroup, cls: type) -> None:
    """Add one flag per field of the dataclass ``cls`` to ``parser`` (or an argument group of it)."""
    for field, annotation in _flag_fields(cls):
        spec = _spec(field, annotation, cls)
        parser.add_argument(spec.name, **spec.kwargs)


def from_flags(cls: type[T], args: argparse.Namespace, **values: Any) -> T:
    """``cls`` built from the flags ``add_flags`` added, parsed into ``args``; ``values`` supply the fields that
    are not flags (nested dataclasses) or replace parsed ones."""
    for field, annotation in _flag_fields(cls):
        if field.name in values:
            continue
        value = getattr(args, field.name)
        container = _spec(field, annotation, cls).container
        values[field.name] = container(value) if container is not None and value is not None else value
    return cls(**values)


class DefaultsHelpFormatter(argparse.HelpFormatter):
    """Shows an option's default after its help, unless it says nothing (``None``, empty, a switch's ``False``)."""

    def add_argument(self, action: argparse.Action) -> None:
        default = action.default
        shown = " ".join(map(str, default)) if isinstance(default, (tuple, list)) else str(default)
        silent = default is None or default is argparse.SUPPRESS or isinstance(default, bool) or not shown
        if action.option_strings and action.help is not argparse.SUPPRESS and not silent:
            action = copy.copy(action)
            action.help = f"{action.help or ''} (default: {shown.replace('%', '%%')})".lstrip()
        super().add_argument(action)
