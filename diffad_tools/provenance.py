# Copyright (C) 2026 anomalib-diffad authors
# SPDX-License-Identifier: Apache-2.0
"""How the benchmark scripts record the command and the paths behind a result file.

Paths are written relative to the repository root (``../shared/data/mvtec3d``, ``benchmarks/speed/results``),
so a committed result says how to rerun it from any checkout and names no machine's folders.

Example:
    >>> from pathlib import Path
    >>> root = Path("/home/me/anomalib-diffad")
    >>> relative_path(Path("/home/me/anomalib-diffad/datasets/textures"), root)
    'datasets/textures'
    >>> recorded_command(["benchmarks/speed/compare_speed.py", "--out=/home/me/runs"], root, cwd=root)
    'python benchmarks/speed/compare_speed.py --out=../runs'
"""

import os
import shlex
from collections.abc import Sequence
from pathlib import Path


def relative_path(path: str | Path, root: Path, cwd: Path | None = None) -> str:
    """``path`` (absolute, or relative to ``cwd``, default the working folder) relative to ``root``, POSIX style."""
    absolute = Path(cwd or Path.cwd()) / path
    return Path(os.path.relpath(absolute, root)).as_posix()


def _relative_argument(argument: str, root: Path, cwd: Path) -> str:
    """A command-line argument with its path, if any, made relative to ``root``.

    Absolute paths (also as ``--option=/path``) are rewritten; a relative argument only when it names an
    existing file or folder and the command ran outside ``root``.
    """
    option, equals, value = argument.rpartition("=") if argument.startswith("--") else ("", "", argument)
    if value.startswith("/") or (cwd != root and value and not value.startswith("-") and (cwd / value).exists()):
        value = relative_path(value, root, cwd)
    return option + equals + value


def recorded_command(argv: Sequence[str], root: Path, cwd: Path | None = None, program: str = "python") -> str:
    """``program argv...`` as run from ``root``: each path argument relative to ``root``, shell-quoted.

    Args:
        argv: The script and its arguments (``sys.argv``).
        root: Repository root.
        cwd: Folder the command ran in (default: the working folder).
        program: What ran ``argv``.
    """
    cwd = Path(cwd or Path.cwd()).resolve()
    root = Path(root).resolve()
    return shlex.join([program, *(_relative_argument(argument, root, cwd) for argument in argv)])
