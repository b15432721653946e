"""What a long command says while it works: a progress bar on a terminal, a plain line every half minute when its
output goes to a file (a bar's carriage returns would fill a log with hundreds of redrawn lines), one status line
per silent phase (data, tokenizer, kernel build), and nothing but results and warnings with ``--quiet``.

Everything here writes to stderr, so a command's results on stdout stay clean to pipe.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

from tqdm import tqdm

# seconds between two plain progress lines when stderr is not a terminal
PLAIN_LINE_SECONDS = 30.0

_quiet = False


def set_quiet(quiet: bool) -> None:
    """``--quiet``: no progress and no status lines from now on (results and warnings still print)."""
    global _quiet
    _quiet = quiet


def is_quiet() -> bool:
    return _quiet


def _terminal() -> bool:
    return bool(getattr(sys.stderr, "isatty", lambda: False)())


def status(message: str) -> None:
    """One line saying what a command is doing now (before a phase that shows no progress of its own, a score
    after an epoch); on a terminal it goes above any progress bar instead of through it."""
    if not _quiet:
        tqdm.write(message, file=sys.stderr)


class PlainProgress:
    """tqdm's ``update``/``set_postfix``/``close`` as plain lines: one at most every ``interval`` seconds
    while work goes on, and one at the end (``description: 40/100 step, loss=2.31, 1m05s``)."""

    def __init__(
        self,
        total: int | None,
        description: str,
        unit: str,
        initial: int = 0,
        interval: float = PLAIN_LINE_SECONDS,
        disable: bool = False,
    ) -> None:
        self.total, self.description, self.unit, self.n = total, description, unit, initial
        self.interval, self.disable = interval, disable
        self.postfix: dict[str, Any] = {}
        self.started = self.last_line = time.monotonic()
        self.unreported = False

    def update(self, count: int = 1) -> None:
        self.n += count
        self.unreported = True
        if time.monotonic() - self.last_line >= self.interval:
            self._line()

    def set_postfix(self, **values: Any) -> None:
        self.postfix = values

    def close(self) -> None:
        if self.unreported:
            self._line()

    def _line(self) -> None:
        self.last_line, self.unreported = time.monotonic(), False
        if self.disable:
            return
        count = f"{self.n}/{self.total}" if self.total else f"{self.n}"
        values = "".join(f", {name}={value}" for name, value in self.postfix.items())
        seconds = int(self.last_line - self.started)
        prefix = f"{self.description}: " if self.description else ""
        print(f"{prefix}{count} {self.unit}{values}, {seconds // 60}m{seconds % 60:02d}s", file=sys.stderr, flush=True)


def progress(
    total: int | None = None,
    description: str = "",
    unit: str = "step",
    initial: int = 0,
    enabled: bool = True,
    leave: bool = False,
) -> tqdm | PlainProgress:
    """A progress bar on a terminal, :class:`PlainProgress` otherwise; silent when not ``enabled`` or quiet."""
    disable = not enabled or _quiet
    if _terminal():
        return tqdm(
            total=total, desc=description, unit=unit, initial=initial, disable=disable, leave=leave, dynamic_ncols=True
        )
    return PlainProgress(total, description, unit, initial, disable=disable)


class StatusHandler(logging.Handler):
    """Log records as status lines: info hushed by ``--quiet``, warnings and errors always shown."""

    def emit(self, record: logging.LogRecord) -> None:
        message = self.format(record)
        if record.levelno >= logging.WARNING:
            tqdm.write(message, file=sys.stderr)
        else:
            status(message)


def show_package_logs() -> None:
    """Send this package's log records (``logging.getLogger("ultrafastbert")``) to stderr as status lines."""
    package = logging.getLogger(__name__.rpartition(".")[0])
    if not any(isinstance(handler, StatusHandler) for handler in package.handlers):
        handler = StatusHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        package.addHandler(handler)
    package.setLevel(logging.INFO)
