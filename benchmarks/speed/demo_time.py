# Copyright (C) 2026 anomalib-diffad authors
# SPDX-License-Identifier: Apache-2.0
"""Time ``scripts/demo.sh`` as a user sees it: its output read as it arrives, as from a log file.

Runs the demo (with the environment given, e.g. ``EPOCHS``, ``VENV``, ``OMP_NUM_THREADS``), copies its output
into ``--log``, and writes ``demo_time.json``: the total time, the time of each part (set-up, dataset, each
category, report), the longest silence between two output lines (progress must come at least once a minute),
and the machine's 1-minute load average sampled during the run (other jobs inflate the times).

Example:
    python benchmarks/speed/demo_time.py --log results/demo.log --out benchmarks/speed/results
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
from pathlib import Path

from diffad_tools.provenance import cpu_description

REPO = Path(__file__).resolve().parents[2]
SETTINGS = ("EPOCHS", "CATEGORIES", "CONFIG", "PATCH_CONFIG", "PATCH_STEPS", "DATA", "OUT", "VENV", "OMP_NUM_THREADS")
PART = re.compile(
    r"demo: (?:(setting up|writing the built-in|done in)"
    r"|(?P<config>\S+), [^,:]+(?:, category \d+ of \d+: (?P<category>\w+)|: (?P<report>writing the result)))",
)
PART_NAMES = {"setting up": "setup", "writing the built-in": "dataset", "done in": "done"}


def part_name(match: re.Match) -> str:
    """``setup``, ``dataset``, ``done``, or ``<preset>/<category>`` and ``<preset>/report`` of a demo line."""
    if match.group(1):
        return PART_NAMES[match.group(1)]
    return f"{Path(match['config']).stem}/{match['category'] or 'report'}"


def sample_load(samples: list[float], stop: threading.Event, every: float = 10.0) -> None:
    """Append the 1-minute load average every ``every`` seconds until ``stop`` is set."""
    while not stop.wait(every):
        samples.append(os.getloadavg()[0])


def run_demo(log: Path) -> dict:
    """Run the demo, copy its output to ``log``; the parts' durations and the longest silence, in seconds."""
    start = last = time.monotonic()
    marks: list[tuple[str, float]] = []
    silence, silence_after = 0.0, ""
    previous = ""
    with log.open("w") as handle, subprocess.Popen(
        ["bash", "scripts/demo.sh"], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1
    ) as process:
        assert process.stdout is not None
        for line in process.stdout:
            now = time.monotonic()
            handle.write(line)
            handle.flush()
            if now - last > silence:
                silence, silence_after = now - last, previous.strip()
            last, previous = now, line
            if match := PART.search(line):
                marks.append((part_name(match), now - start))
    if process.returncode != 0:
        sys.exit(f"scripts/demo.sh failed ({process.returncode}); see {log}")
    total = time.monotonic() - start
    ends = [at for _, at in marks[1:]] + [total]
    parts = {name: round(end - at, 1) for (name, at), end in zip(marks, ends, strict=True) if name != "done"}
    return {"total_s": round(total, 1), "parts_s": parts, "longest_silence_s": round(silence, 1),
            "longest_silence_after": silence_after}  # fmt: skip


def main() -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--log", type=Path, default=Path("results/demo.log"), help="copy of the demo's output")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/speed/results"))
    args = parser.parse_args()
    args.log.parent.mkdir(parents=True, exist_ok=True)
    samples, stop = [os.getloadavg()[0]], threading.Event()
    sampler = threading.Thread(target=sample_load, args=(samples, stop), daemon=True)
    sampler.start()
    timing = run_demo(args.log)
    stop.set()
    settings = {name: os.environ[name] for name in SETTINGS if name in os.environ}
    if "VENV" in settings:
        settings["VENV"] = "<an installed venv>"  # machine-specific; it only skips the set-up
    git = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, check=False)
    commit = git.stdout.strip()
    result = {
        "results": timing,
        "load_1min": {"mean": round(sum(samples) / len(samples), 2), "max": round(max(samples), 2)},
        "cpus": len(os.sched_getaffinity(0)),
        "cpu": cpu_description(),
        "settings": settings,
        "commit": commit,
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "command": " ".join([*(f"{k}={shlex.quote(v)}" for k, v in settings.items()), "python", *sys.argv]),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "demo_time.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
