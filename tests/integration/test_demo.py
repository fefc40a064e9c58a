# Copyright (C) 2026 anomalib-diffad authors
# SPDX-License-Identifier: Apache-2.0
"""``scripts/demo.sh`` as a new user runs it with its output going to a log file, made tiny (tiny preset, one
category, two epochs, the installed venv): progress lines, no avoidable warning, table and summary picture."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from diffad_tools.report import PANEL_INCHES, SUMMARY_DPI, SUMMARY_ROWS

REPO = Path(__file__).resolve().parents[2]
# anomalib's F1AdaptiveThreshold warns on a validation split with normal images only.
KNOWN_WARNING = "f1_adaptive_threshold"


@pytest.fixture(scope="module")
def demo_log(dataset_root: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """Run the demo into a temporary folder, stdout and stderr into one file; return the folder and the log."""
    out = tmp_path_factory.mktemp("demo")
    settings = {
        "VENV": str(Path(sys.executable).parent.parent),
        "CONFIG": "configs/diffad_tiny.yaml",
        "CATEGORIES": "brick",
        "EPOCHS": "2",
        "PATCH_STEPS": "4",
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2"),  # no thread fitting: its warning depends on the load
        "DATA": str(dataset_root),
        "OUT": str(out / "results"),
    }
    log = out / "demo.log"
    with log.open("w") as handle:
        result = subprocess.run(
            ["bash", str(REPO / "scripts" / "demo.sh")],
            env=os.environ | settings,
            stdout=handle,
            stderr=subprocess.STDOUT,
            timeout=900,
            check=False,
        )
    text = log.read_text()
    assert result.returncode == 0, text[-3000:]
    return out / "results", text


def test_log_shows_category_and_step_progress(demo_log: tuple[Path, str]) -> None:
    """The log names the category, the planned steps, every step line's count of the total, then testing; then
    the patch preset's runs, with their own step lines."""
    _, log = demo_log
    text, patch = log.split("demo: configs/diffad_patch.yaml, 4 steps, category 1 of 1: brick")
    assert "demo: configs/diffad_tiny.yaml, 2 epochs, category 1 of 1: brick" in text
    assert re.search(r"train step 4/4 \(", patch)
    assert re.search(r"testing done \(\d+ batch", patch)
    plan = re.search(r"DiffAD on MVTecAD/brick: training (\d+) steps \((\d+) epochs x (\d+) batches\)", text)
    assert plan is not None, text[-3000:]
    total, epochs, batches = map(int, plan.groups())
    assert (epochs, total) == (2, epochs * batches)
    steps = [tuple(map(int, match)) for match in re.findall(r"train step (\d+)/(\d+) \([\d.]+ (?:s/)?step", text)]
    assert steps[0] == (1, total)
    assert steps[-1] == (total, total)
    assert re.search(r"validating: \d+ batch", text)
    assert "testing: 2 batches" in text  # 8 test images, eval batch 4
    assert "testing done (2 batches in" in text
    assert re.search(r"demo: done in \d+ min \d+ s", patch)


def test_log_has_no_avoidable_warning(demo_log: tuple[Path, str]) -> None:
    """No Python warning (``file.py:N: message``) and no logged WARNING other than the known one."""
    _, text = demo_log
    warnings = [
        line
        for line in text.splitlines()
        if re.search(r"\.py:\d+: |WARNING|Warning:", line) and KNOWN_WARNING not in line
    ]
    assert warnings == []


def test_table_and_summary_picture(demo_log: tuple[Path, str]) -> None:
    """``results.md`` has the category's row; ``summary.png`` is one block of 3 rows x 6 images (2 good, 4 defect);
    the patch preset has its own table and picture."""
    results, text = demo_log
    assert re.search(r"^\| brick \| [\d.]+ \|", (results / "results.md").read_text(), re.MULTILINE)
    assert re.search(r"^\| brick \| [\d.]+ \|", (results / "patch" / "results.md").read_text(), re.MULTILINE)
    assert (results / "patch" / "summary.png").is_file()
    summary = results / "summary.png"
    assert f"summary picture: {summary}" in text
    width, height = Image.open(summary).size
    assert width == round((6 * PANEL_INCHES + 0.4) * SUMMARY_DPI)
    assert height == round((len(SUMMARY_ROWS) * PANEL_INCHES + 0.5 + 0.4) * SUMMARY_DPI)
