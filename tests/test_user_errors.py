# Copyright (C) 2026 anomalib-diffad authors
# SPDX-License-Identifier: Apache-2.0
"""A missing dataset folder is named before any download; data errors print without traceback."""

import logging
from pathlib import Path

import pytest
from anomalib.data import MVTecAD
from anomalib.data.datamodules.image import mvtecad

from anomalib_diffad.data.checks import DataCheckError, check_mvtec_root
from diffad_tools.anomalib_cli import print_data_errors

URL = "https://www.example.invalid/mvtec.tar.xz"
CATEGORIES = ("bottle", "cable")


def _never_probed(url: str) -> bool:
    msg = f"probed {url}"
    raise AssertionError(msg)


def test_missing_root_of_a_category_no_download_has_is_named_without_probing(tmp_path: Path) -> None:
    """A category MVTec AD does not have: the error names the folder, the layout and both ways to get data."""
    root = tmp_path / "nowhere"
    with pytest.raises(DataCheckError) as error:
        check_mvtec_root(root, "brick", URL, CATEGORIES, reachable=_never_probed)
    message = str(error.value)
    assert f"The dataset folder {root} (--data.root) does not exist." in message
    assert "'brick' is not an MVTec AD category (bottle, cable)" in message
    assert "brick/ground_truth/<defect>/*_mask.png" in message
    assert "python -m diffad_tools.textures --root" in message
    assert not root.exists()


def test_missing_category_lists_the_folders_there(tmp_path: Path) -> None:
    """An existing root without the category: the message lists the categories it holds."""
    (tmp_path / "grass").mkdir()
    (tmp_path / "gravel").mkdir()
    expected = r"has no category folder 'brick' \(--data.category\); it holds grass, gravel"
    with pytest.raises(DataCheckError, match=expected):
        check_mvtec_root(tmp_path, "brick", URL, CATEGORIES, reachable=_never_probed)


def test_mvtec_category_downloads_only_when_the_server_answers(
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """An MVTec AD category: unreachable server -> error naming the host; reachable -> a warning, no error."""
    with pytest.raises(DataCheckError, match=r"cannot be downloaded from here \(www.example.invalid is unreachable\)"):
        check_mvtec_root(tmp_path / "mvtec", "bottle", URL, CATEGORIES, reachable=lambda _url: False)
    with caplog.at_level(logging.WARNING):
        check_mvtec_root(tmp_path / "mvtec", "bottle", URL, CATEGORIES, reachable=lambda _url: True)
    assert "Downloading MVTec AD (4.9 GB)" in caplog.text


def test_present_category_is_not_probed(tmp_path: Path) -> None:
    """A present category folder passes at once."""
    (tmp_path / "bottle").mkdir()
    check_mvtec_root(tmp_path, "bottle", URL, CATEGORIES, reachable=_never_probed)


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
