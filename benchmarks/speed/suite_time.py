# Copyright (C) 2026 anomalib-diffad authors
# SPDX-License-Identifier: Apache-2.0
"""Time the test suite as CI runs it: ``CI=true bash scripts/test.sh`` with pytest's ``--durations`` table.

Runs ``bash scripts/test.sh -q --durations=0 -p no:cacheprovider`` (arguments after ``--`` are added, e.g. a test
file or ``-x``) from the repository root with ``CI=true``, copies its output to the terminal and to ``--log``, and
writes ``<out>/<name>.json``: the wall time of the whole command (set-up check included), pytest's own seconds, the
counts (passed, failed, skipped, errors), the exit status, the 25 slowest test phases (setup, call, teardown), the
seconds per test file (all phases summed), the machine's 1-minute load average sampled during the run (other jobs
inflate the times), the CPU, the commit and the command; and ``<out>/<name>.png``: seconds per test file, top 20.
Exits with the suite's status.

Example:
    python benchmarks/speed/suite_time.py --log results/suite.log --out benchmarks/speed/results
    bash benchmarks/speed/avx2.sh python benchmarks/speed/suite_time.py --name suite_time_avx2
"""

import argparse
import json
import os
import re
import shlex
import subprocess
import sys
import threading
import time
from collections import defaultdict
from pathlib import Path
from typing import NamedTuple

from benchmarks.speed.demo_time import sample_load
from diffad_tools.provenance import ISA_CAPS, cpu_description, recorded_command

REPO = Path(__file__).resolve().parents[2]
PYTEST_ARGS = ("-q", "--durations=0", "-p", "no:cacheprovider")
SETTINGS = ("OMP_NUM_THREADS", *ISA_CAPS)
"""Environment variables that change the suite's speed, recorded in front of the command."""
SLOWEST, TOP_FILES = 25, 20

ANSI = re.compile(r"\x1b\[[0-9;]*m")
SUMMARY = re.compile(r"^=*\s*((?:\d+ \w+)(?:, \d+ \w+)*|no tests ran) in (\d+(?:\.\d+)?)s\b")
DURATION = re.compile(r"^(\d+(?:\.\d+)?)s (setup|call|teardown)\s+(\S.*?)\s*$")
TEST_SH_END = re.compile(r"(\d\d:\d\d:\d\d) test: pytest took (\d+) min (\d+) s \(exit status (\d+)\)")
PLURAL = {"error": "errors", "warning": "warnings"}


class Summary(NamedTuple):
    """pytest's final line: how many tests ended how (``passed``, ``failed``, ``skipped``, ``errors``, and any
    other word it printed, e.g. ``warnings``, ``deselected``) and its own seconds."""

    counts: dict[str, int]
    seconds: float


class Phase(NamedTuple):
    """One line of pytest's ``--durations`` table."""

    seconds: float
    phase: str
    test: str


class ScriptEnd(NamedTuple):
    """``scripts/test.sh``'s closing line: pytest's time as the script measured it, and pytest's exit status."""

    clock: str
    seconds: int
    exit_status: int


def clean_lines(output: str) -> list[str]:
    """The output's lines without colour codes (pytest colours them when ``FORCE_COLOR`` or ``PY_COLORS`` is set)."""
    return ANSI.sub("", output).splitlines()


def summary(output: str) -> Summary | None:
    """The last pytest summary line in ``output`` (``1 failed, 414 passed, ... in 999.44s (0:16:39)``); ``None``
    where there is none (e.g. the set-up failed before pytest ran).

    Example:
        >>> summary("1 failed, 414 passed, 1 skipped, 1 error, 43 warnings in 999.44s (0:16:39)")
        Summary(counts={'passed': 414, 'failed': 1, 'skipped': 1, 'errors': 1, 'warnings': 43}, seconds=999.44)
    """
    for line in reversed(clean_lines(output)):
        if match := SUMMARY.match(line.strip()):
            counts = {"passed": 0, "failed": 0, "skipped": 0, "errors": 0}
            for item in re.findall(r"(\d+) (\w+)", match[1]):
                counts[PLURAL.get(item[1], item[1])] = int(item[0])
            return Summary(counts, float(match[2]))
    return None


def phases(output: str) -> list[Phase]:
    """Every line of pytest's ``--durations`` table (``81.97s setup    tests/x.py::test_y``), slowest first."""
    found = [Phase(float(m[1]), m[2], m[3]) for line in clean_lines(output) if (m := DURATION.match(line))]
    return sorted(found, key=lambda phase: -phase.seconds)


def seconds_per_file(found: list[Phase]) -> dict[str, float]:
    """Seconds per test file (the test id before ``::``), all phases summed, slowest first."""
    per_file: dict[str, float] = defaultdict(float)
    for phase in found:
        per_file[phase.test.partition("::")[0]] += phase.seconds
    return {name: round(seconds, 2) for name, seconds in sorted(per_file.items(), key=lambda item: -item[1])}


def script_end(output: str) -> ScriptEnd | None:
    """``scripts/test.sh``'s closing line (``HH:MM:SS test: pytest took N min M s (exit status S)``); ``None`` where
    the script stopped before it.

    Example:
        >>> script_end("20:01:02 test: pytest took 16 min 41 s (exit status 1)")
        ScriptEnd(clock='20:01:02', seconds=1001, exit_status=1)
    """
    ends = TEST_SH_END.findall(ANSI.sub("", output))
    if not ends:
        return None
    clock, minutes, seconds, status = ends[-1]
    return ScriptEnd(clock, int(minutes) * 60 + int(seconds), int(status))


def run_suite(pytest_args: list[str], log: Path) -> tuple[int, str, float]:
    """Run ``scripts/test.sh`` with ``CI=true``, its output copied to the terminal and ``log`` as it arrives;
    its exit status, its output and its wall time in seconds."""
    chunks: list[bytes] = []
    start = time.monotonic()
    with log.open("wb") as handle, subprocess.Popen(
        ["bash", "scripts/test.sh", *pytest_args], cwd=REPO, env=os.environ | {"CI": "true"},
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    ) as process:  # fmt: skip
        assert process.stdout is not None
        while chunk := process.stdout.read1(65536):
            for stream in (sys.stdout.buffer, handle):
                stream.write(chunk)
                stream.flush()
            chunks.append(chunk)
    return process.returncode, b"".join(chunks).decode(errors="replace"), time.monotonic() - start


def plot(per_file: dict[str, float], title: str, path: Path) -> None:
    """Horizontal bars of the seconds of the slowest test files."""
    import matplotlib as mpl

    mpl.use("Agg")
    import matplotlib.pyplot as plt

    top = list(per_file.items())[:TOP_FILES]
    figure, axis = plt.subplots(figsize=(10, 0.35 * len(top) + 1.5))
    axis.barh([name for name, _ in top], [seconds for _, seconds in top])
    axis.set_xlabel("seconds (setup + call + teardown)")
    axis.set_title(title, fontsize=10)
    axis.invert_yaxis()
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def main() -> None:
    """Command-line entry point."""
    argv = sys.argv[1:]
    own, extra = (argv[: argv.index("--")], argv[argv.index("--") + 1 :]) if "--" in argv else (argv, [])
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], usage="%(prog)s [options] [-- pytest arguments...]"
    )
    parser.add_argument("--log", type=Path, default=Path("results/suite.log"), help="copy of the suite's output")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/speed/results"))
    parser.add_argument("--name", default="suite_time", help="stem of the result files (e.g. suite_time_avx2)")
    args = parser.parse_args(own)
    pytest_args = [*PYTEST_ARGS, *extra]
    args.log.parent.mkdir(parents=True, exist_ok=True)
    samples, stop = [os.getloadavg()[0]], threading.Event()
    threading.Thread(target=sample_load, args=(samples, stop, 5.0), daemon=True).start()
    status, output, wall = run_suite(pytest_args, args.log)
    stop.set()

    pytest_summary, found, end = summary(output), phases(output), script_end(output)
    per_file = seconds_per_file(found)
    cpu = cpu_description()
    settings = {name: os.environ[name] for name in SETTINGS if os.environ.get(name)}
    git = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True, check=False)
    result = {
        "results": {
            "wall_s": round(wall, 1),
            "pytest_s": pytest_summary.seconds if pytest_summary else None,
            "test_sh_pytest_s": end.seconds if end else None,
            "counts": pytest_summary.counts if pytest_summary else None,
            "exit_status": status,
            "slowest_phases": [phase._asdict() for phase in found[:SLOWEST]],
            "seconds_per_file": per_file,
            "phases_total_s": round(sum(phase.seconds for phase in found), 2),
        },
        "pytest_args": pytest_args,
        "load_1min": {"mean": round(sum(samples) / len(samples), 2), "max": round(max(samples), 2)},
        "cpu": cpu,
        "settings": settings,
        "commit": git.stdout.strip(),
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "command": " ".join(
            [*(f"{name}={shlex.quote(value)}" for name, value in settings.items()), recorded_command(sys.argv, REPO)]
        ),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{args.name}.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({key: value for key, value in result["results"].items() if key != "slowest_phases"}, indent=2))
    if per_file:
        minutes, seconds = divmod(round(wall), 60)
        title = (
            f"Test suite: {minutes} min {seconds} s wall, exit status {status}; {cpu['instruction_set']}\n"
            f"seconds per test file (top {min(TOP_FILES, len(per_file))} of {len(per_file)})"
        )
        plot(per_file, title, args.out / f"{args.name}.png")
    else:
        print(f"suite_time: no --durations lines in the output; no plot (see {args.log})", file=sys.stderr)
    sys.exit(status)


if __name__ == "__main__":
    main()
