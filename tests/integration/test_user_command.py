# Copyright (C) 2026 anomalib-diffad authors
# SPDX-License-Identifier: Apache-2.0
"""The command users type first, ``anomalib train --model DiffAD --data MVTec ...``, with no config file.

anomalib's ``MVTecAD`` defaults (batch 32, 8 workers) and DiffAD's class defaults (whole 256 px images) needed
about 0.73 GiB per training image in one pass; the peak memory of the whole process tree (PSS, workers
included) is bounded here. A missing dataset folder and a broken image stop with one message naming them, no
traceback, and, with the ``FailedRunCleanup`` callback, leave no result folder.
"""

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from diffad_tools.report import printed_metrics
from diffad_tools.textures import generate_texture_dataset
from tests.integration.test_cli import METRICS

ANOMALIB = Path(sys.executable).parent / "anomalib"
PEAK_GIB = 3.5
"""Bound of the bare command's peak memory (process tree, PSS), as stated in the README."""
CLEANUP = "diffad_tools.callbacks.FailedRunCleanup"


def _tree(pid: int) -> list[int]:
    """``pid`` and all its descendants (from each thread's ``children`` list: no scan of ``/proc``)."""
    found, stack = [], [pid]
    while stack:
        current = stack.pop()
        found.append(current)
        for children in Path(f"/proc/{current}/task").glob("*/children"):
            try:
                stack += [int(child) for child in children.read_text().split()]
            except OSError:  # noqa: PERF203 - a process may exit while its children are read
                continue
    return found


def _pss(pid: int) -> int:
    """Proportional set size in bytes (shared pages split among the processes that map them)."""
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return 0
    return 0


def _run(*args: str, cwd: Path, timeout: float = 600) -> tuple[subprocess.CompletedProcess, float, float]:
    """Run ``anomalib *args``; return the result, its wall time and the peak summed PSS of its process tree (GiB)."""
    env = os.environ | {"ANOMALIB_DIFFAD_TRACEBACK": "0"}
    start = time.monotonic()
    process = subprocess.Popen(
        [str(ANOMALIB), *args], cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    peak = 0
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, sum(_pss(pid) for pid in _tree(process.pid)))
            done.wait(0.5)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    stdout, stderr = process.communicate(timeout=timeout)
    done.set()
    sampler.join()
    result = subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)
    return result, time.monotonic() - start, peak / 2**30


def _no_result_folders(cwd: Path) -> None:
    results = cwd / "results"
    assert not results.exists() or not any(results.iterdir()), sorted(results.rglob("*"))


@pytest.mark.skipif(not Path("/proc/self/smaps_rollup").exists(), reason="needs Linux /proc")
def test_bare_command_trains_validates_and_tests_in_bounded_memory(tmp_path: Path) -> None:
    """The README's command with no config and anomalib's data defaults (batch 32, 8 workers), one step on six
    128 px training images (256 px in the model): it trains, validates, tests, and the whole process tree
    stays under :data:`PEAK_GIB` (one pass over the six images needed about 5.6 GiB)."""
    root = generate_texture_dataset(
        tmp_path / "textures",
        categories=("brick",),
        image_size=128,
        num_train=6,
        num_test_good=1,
        num_test_per_defect=1,
        seed=5,
    )
    result, seconds, peak = _run(
        "train", "--model", "DiffAD", "--data", "MVTec", "--data.root", str(root), "--data.category", "brick",
        "--trainer.max_steps", "1",
        cwd=tmp_path,
    )  # fmt: skip
    output = result.stdout + result.stderr
    print(f"bare command: peak {peak:.2f} GiB (process tree, PSS) in {seconds:.0f} s")  # noqa: T201
    assert result.returncode == 0, output[-3000:]
    assert sorted(printed_metrics(output)) == sorted(METRICS)
    run = tmp_path / "results" / "DiffAD" / "MVTecAD" / "brick" / "v0"
    assert (run / "weights" / "lightning" / "model.ckpt").exists()
    assert peak < PEAK_GIB, f"peak {peak:.2f} GiB"


def test_missing_dataset_folder_fails_within_seconds_naming_it(tmp_path: Path) -> None:
    """A ``--data.root`` that does not exist: one message naming it, the layout and how to get data; no
    traceback, no download, no folder created, no result folder left (``FailedRunCleanup``)."""
    missing = tmp_path / "datasets" / "textures"
    result, seconds, _ = _run(
        "train", "--model", "DiffAD", "--data", "MVTec", "--data.root", str(missing), "--data.category", "brick",
        "--trainer.max_steps", "5", "--trainer.callbacks+=" + CLEANUP,
        cwd=tmp_path, timeout=300,
    )  # fmt: skip
    assert result.returncode == 1
    assert f"error: The dataset folder {missing} (--data.root) does not exist." in result.stderr
    assert "MVTecAD expects, under" in result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    # 11-15 s on 2 idle cores (the CLI's imports); a bound for slow or shared CPUs: before, a download attempt and
    # 344 lines of traceback
    assert seconds < 120
    assert not missing.exists()
    _no_result_folders(tmp_path)


def test_broken_image_prints_its_name_without_traceback_and_leaves_no_results(tmp_path: Path) -> None:
    """A truncated training PNG: the message names the file, no traceback, no new result folder
    (``FailedRunCleanup``)."""
    root = generate_texture_dataset(
        tmp_path / "textures", categories=("brick",), image_size=64, num_train=4, num_test_good=1,
        num_test_per_defect=1, seed=5,
    )  # fmt: skip
    broken = root / "brick" / "train" / "good" / "002.png"
    broken.write_bytes(broken.read_bytes()[:200])
    result, _, _ = _run(
        "train", "--model", "DiffAD", "--data", "MVTec", "--data.root", str(root), "--data.category", "brick",
        "--data.num_workers", "0", "--trainer.callbacks+=" + CLEANUP,
        cwd=tmp_path, timeout=300,
    )  # fmt: skip
    assert result.returncode == 1
    assert f"error: Cannot read image file {broken}" in result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    _no_result_folders(tmp_path)
