# Copyright (C) 2026 anomalib-diffad authors
# SPDX-License-Identifier: Apache-2.0
"""Result files record their commands and paths relative to the repository root, naming no machine's folders."""

import re
from pathlib import Path

from diffad_tools.provenance import recorded_command, relative_path

REPO = Path(__file__).resolve().parents[2]
ABSOLUTE_MACHINE_PATH = re.compile(r"(?<![\w.~-])/(?:work|tmp)/")


def test_no_file_under_benchmarks_names_an_absolute_machine_path() -> None:
    """Scripts, result JSON/CSV/Markdown: no absolute ``/work/...`` or ``/tmp/...`` path (``../../tmp/x`` is
    relative; images and other binary files are skipped)."""
    offenders, scanned = [], 0
    for path in sorted((REPO / "benchmarks").rglob("*")):
        if not path.is_file():
            continue
        scanned += 1
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue
        offenders += [f"{path.relative_to(REPO)}: {line.strip()[:120]}" for line in text.splitlines()
                      if ABSOLUTE_MACHINE_PATH.search(line)]  # fmt: skip
    assert scanned > 50, f"only {scanned} files under {REPO / 'benchmarks'}"  # the repository's, not an empty folder
    assert not offenders, "\n".join(offenders)


def test_recorded_command_makes_every_path_relative_to_the_root(tmp_path: Path) -> None:
    """Absolute paths (also ``--option=path``) and paths relative to another working folder become relative to
    the root; other arguments are kept and quoted."""
    root, elsewhere = tmp_path / "repo", tmp_path / "elsewhere"
    (root / "benchmarks").mkdir(parents=True)
    (elsewhere / "data").mkdir(parents=True)
    argv = [
        str(root / "benchmarks" / "run.py"),
        "--root", "data",
        "--out", str(root / "benchmarks" / "results"),
        f"--scratch={tmp_path / 'scratch'}",
        "--dataset-name", "MVTec 3D-AD tire (RGB)",
        "--models", "diffad",
    ]  # fmt: skip
    assert recorded_command(argv, root, cwd=elsewhere) == (
        "python benchmarks/run.py --root ../elsewhere/data --out benchmarks/results --scratch=../scratch "
        "--dataset-name 'MVTec 3D-AD tire (RGB)' --models diffad"
    )
    assert relative_path(root / "datasets" / "textures", root) == "datasets/textures"
    assert relative_path("datasets/textures", root, cwd=root) == "datasets/textures"
