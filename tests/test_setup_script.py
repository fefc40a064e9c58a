# Copyright (C) 2026 anomalib-diffad authors
# SPDX-License-Identifier: Apache-2.0
"""``scripts/setup.sh`` installs torch's CPU build where no NVIDIA GPU is found, with an override and a fallback.

The script runs from a copy whose ``.venv/bin/python`` only records its arguments, so nothing is installed,
whatever the script does.
"""

import os
import shutil
import subprocess
from pathlib import Path

import pytest

SCRIPT = Path(__file__).parents[1] / "scripts" / "setup.sh"


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A copy of the script beside a fake ``.venv`` whose python records each call in ``calls.txt``."""
    (tmp_path / "scripts").mkdir()
    shutil.copy(SCRIPT, tmp_path / "scripts" / "setup.sh")
    python = tmp_path / ".venv" / "bin" / "python"
    python.parent.mkdir(parents=True)
    python.write_text(f'#!/bin/sh\necho "$@" >> {tmp_path / "calls.txt"}\n')
    python.chmod(0o755)
    return tmp_path


def _setup(project: Path, gpu: bool, **env: str) -> subprocess.CompletedProcess:
    """Run ``setup.sh --dry-run`` with an ``nvidia-smi`` that lists a GPU or fails (as without a driver)."""
    bin_dir = project / "bin"
    bin_dir.mkdir(exist_ok=True)
    smi = bin_dir / "nvidia-smi"
    smi.write_text('#!/bin/sh\necho "GPU 0: NVIDIA H100 (UUID: GPU-0)"\n' if gpu else "#!/bin/sh\nexit 9\n")
    smi.chmod(0o755)
    environment = {k: v for k, v in os.environ.items() if not k.startswith("TORCH")}
    environment |= {"PATH": f"{bin_dir}:{os.environ['PATH']}", **env}
    return subprocess.run(
        ["bash", str(project / "scripts" / "setup.sh"), "--dry-run"],
        env=environment,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def _pip_commands(result: subprocess.CompletedProcess) -> list[str]:
    return [line for line in result.stdout.splitlines() if line.startswith("+ pip install")]


def test_no_gpu_installs_torch_from_the_cpu_index(project: Path) -> None:
    """No GPU: torch and torchvision from the CPU index, then the project with the same pins; nothing runs."""
    index = project / "cpu_index"
    index.mkdir()
    result = _setup(project, gpu=False, TORCH_CPU_INDEX=index.as_uri())
    assert result.returncode == 0, result.stderr
    assert "no NVIDIA GPU found" in result.stdout
    assert _pip_commands(result) == [
        f"+ pip install --index-url {index.as_uri()} torch==2.14.1 torchvision==0.29.1",
        "+ pip install torch==2.14.1 torchvision==0.29.1 -e .[weights,test]",
    ]
    assert not (project / "calls.txt").exists()


def test_gpu_installs_the_default_build(project: Path) -> None:
    """A GPU listed by ``nvidia-smi -L``: PyPI's default (CUDA) build, no CPU index."""
    result = _setup(project, gpu=True, TORCH_CPU_INDEX=(project / "missing").as_uri())
    assert result.returncode == 0, result.stderr
    assert "NVIDIA GPU found" in result.stdout
    assert not any("--index-url" in command for command in _pip_commands(result))


def test_unreachable_cpu_index_falls_back_with_a_message(project: Path) -> None:
    """The CPU index cannot be reached: the message says so, and torch comes from the default index."""
    result = _setup(project, gpu=False, TORCH_CPU_INDEX=(project / "missing").as_uri())
    assert result.returncode == 0, result.stderr
    assert "cannot be reached: torch comes from the default index instead" in result.stdout
    assert _pip_commands(result)[0] == "+ pip install torch==2.14.1 torchvision==0.29.1"


def test_torch_index_overrides_the_choice(project: Path) -> None:
    """``TORCH_INDEX=default`` without a GPU, ``TORCH_INDEX=<url>`` with one; anything else stops with status 2."""
    default = _setup(project, gpu=False, TORCH_INDEX="default")
    assert _pip_commands(default)[0] == "+ pip install torch==2.14.1 torchvision==0.29.1"
    mirror = project / "mirror"
    mirror.mkdir()
    chosen = _setup(project, gpu=True, TORCH_INDEX=mirror.as_uri())
    assert _pip_commands(chosen)[0].startswith(f"+ pip install --index-url {mirror.as_uri()} torch==")
    wrong = _setup(project, gpu=False, TORCH_INDEX="cuda13")
    assert wrong.returncode == 2
    assert "TORCH_INDEX must be auto, cpu, default or an index URL, not 'cuda13'" in wrong.stderr
