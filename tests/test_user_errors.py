# Copyright (C) 2026 anomalib-diffad authors
# SPDX-License-Identifier: Apache-2.0
"""With the ``anomalib`` CLI's checks a missing dataset folder stops ``prepare_data`` before any download; data
errors print without traceback (the check itself: ``tests/data/test_checks.py``)."""

from pathlib import Path

import pytest
from anomalib.data import MVTecAD
from anomalib.data.datamodules.image import mvtecad

from anomalib_diffad.data.checks import DataCheckError
from diffad_tools.anomalib_cli import print_data_errors


@pytest.mark.usefixtures("mvtec_folder_checks")
def test_mvtec_prepare_data_stops_before_downloading(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With the ``anomalib`` CLI's checks, ``MVTecAD.prepare_data`` on a missing folder raises the check's error;
    anomalib's download never starts and the folder is not created."""

    def download(*args: object) -> None:
        msg = f"download started: {args}"
        raise AssertionError(msg)

    monkeypatch.setattr(mvtecad, "download_and_extract", download)
    root = tmp_path / "datasets" / "textures"
    with pytest.raises(DataCheckError, match="does not exist"):
        MVTecAD(root=root, category="brick").prepare_data()
    assert not root.exists()


def test_cli_main_prints_data_errors_without_traceback(
    capsys: pytest.CaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The wrapped CLI main prints a ``DataCheckError`` as one message and exits 1; other errors propagate."""
    monkeypatch.delenv("ANOMALIB_DIFFAD_TRACEBACK", raising=False)

    def bad_data() -> None:
        msg = "Cannot read image file x.png: truncated"
        raise DataCheckError(msg)

    def bug() -> None:
        msg = "a bug"
        raise ValueError(msg)

    with pytest.raises(SystemExit) as exit_info:
        print_data_errors(bad_data)()
    assert exit_info.value.code == 1
    assert capsys.readouterr().err.startswith("error: Cannot read image file x.png: truncated\n")
    with pytest.raises(ValueError, match="a bug"):
        print_data_errors(bug)()
    monkeypatch.setenv("ANOMALIB_DIFFAD_TRACEBACK", "1")
    with pytest.raises(DataCheckError):
        print_data_errors(bad_data)()
