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


ISA_CAPS = ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "MKL_ENABLE_INSTRUCTIONS")
"""Environment variables that cap the instruction set torch's (and OpenVINO's) kernels use
(``benchmarks/speed/avx2.sh`` sets all three to AVX2)."""


def cpu_flags(cpuinfo: str | None = None) -> set[str]:
    """The CPU's feature flags (``/proc/cpuinfo``; empty where there is none)."""
    for line in (_read("/proc/cpuinfo") if cpuinfo is None else cpuinfo).splitlines():
        if line.startswith("flags"):
            return set(line.partition(":")[2].split())
    return set()


def instruction_set(flags: set[str], caps: dict[str, str] | None = None) -> str:
    """The widest instruction set that matters for torch's CPU speed, as the results name it: ``AVX-512 BF16``
    (bfloat16 units), ``AVX-512``, ``AVX2`` or ``older``, followed by the ``caps`` (:data:`ISA_CAPS` that are
    set) that limit what the kernels use.

    Example:
        >>> instruction_set({"avx2", "avx512f", "avx512_bf16"})
        'AVX-512 BF16'
        >>> instruction_set({"avx2", "avx512f", "avx512_bf16"}, {"ONEDNN_MAX_CPU_ISA": "AVX2"})
        'AVX-512 BF16, capped: ONEDNN_MAX_CPU_ISA=AVX2'
    """
    native = (
        "AVX-512 BF16" if "avx512_bf16" in flags or "amx_bf16" in flags
        else "AVX-512" if "avx512f" in flags
        else "AVX2" if "avx2" in flags
        else "older"
    )  # fmt: skip
    if not caps:
        return native
    return f"{native}, capped: " + ", ".join(f"{name}={value}" for name, value in caps.items())


def cpu_description() -> dict[str, str]:
    """The CPU a benchmark ran on: model name, cores and the instruction set (:func:`instruction_set`), for its
    result file."""
    cpuinfo = _read("/proc/cpuinfo")
    lines = cpuinfo.splitlines()
    model = next((line.partition(":")[2].strip() for line in lines if line.startswith("model name")), "unknown")
    caps = {name: os.environ[name] for name in ISA_CAPS if os.environ.get(name)}
    return {"cpu": model, "cores": str(os.cpu_count()), "instruction_set": instruction_set(cpu_flags(cpuinfo), caps)}


def _read(path: str) -> str:
    return Path(path).read_text() if Path(path).is_file() else ""
