"""Start-up time of the command line: ``python benchmarks/startup.py [--repeats 5]``.

Times ``ultrafastbert --help``, ``--version`` and every command's ``--help``, each a fresh process of the installed
console script, in interleaved rounds (``ultrafastbert/bench/timing.py``), beside an empty Python start and an
``import torch`` for scale; prints a table and writes ``benchmarks/results/startup.json``.
"""

from __future__ import annotations

import argparse
import functools
import json
import subprocess
import sys
from pathlib import Path

from ultrafastbert.bench.timing import TIMING_METHOD, Rounds, TimedCall, machine_info, time_interleaved
from ultrafastbert.cli import COMMANDS

BENCH_COMMANDS = ("layer", "shapes", "model")


def _fresh_process(name: str, argv: list[str]) -> TimedCall:
    """A candidate that runs ``argv`` to its end (its output discarded); a non-zero exit stops the benchmark."""
    return TimedCall(name, functools.partial(subprocess.run, argv, check=True, stdout=subprocess.DEVNULL))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds (one fresh process per call)")
    parser.add_argument("--output", default=str(Path(__file__).parent / "results" / "startup.json"))
    args = parser.parse_args()

    script = Path(sys.executable).with_name("ultrafastbert")
    if not script.is_file():
        raise SystemExit(f"no console script {script}: install the package (make setup) first")
    lines = [["--help"], ["--version"], *([name, "--help"] for name in COMMANDS if name != "bench")]
    lines += [["bench", name, "--help"] for name in BENCH_COMMANDS]
    calls = [_fresh_process(" ".join(["ultrafastbert", *words]), [str(script), *words]) for words in lines]
    calls += [
        _fresh_process("python -c pass", [sys.executable, "-c", "pass"]),
        _fresh_process("python -c 'import torch'", [sys.executable, "-c", "import torch"]),
    ]
    timings = time_interleaved(calls, Rounds(repeats=args.repeats, warmup=1))

    width = max(map(len, timings))
    print(f"{'command':<{width}}  median s  min s")
    for name, timing in timings.items():
        print(f"{name:<{width}}  {timing.median_s:8.3f}  {timing.min_s:5.3f}")
    report = {
        "benchmark": "startup",
        "machine": machine_info(),
        "method": TIMING_METHOD,
        "repeats": args.repeats,
        "results": {name: {"median_s": t.median_s, "min_s": t.min_s} for name, t in timings.items()},
    }
    Path(args.output).write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
