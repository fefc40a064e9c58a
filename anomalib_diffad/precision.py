# Copyright (C) 2026 anomalib-diffad authors
# SPDX-License-Identifier: Apache-2.0
"""Training and scoring precision chosen from the hardware when the user did not choose one.

bfloat16 autocast pays only where the processor computes in bfloat16 (AVX-512 BF16 or AMX on x86). Elsewhere
(AVX2 only, or AVX-512 without BF16) torch emulates it: a training step of the patch preset at 256 px took
14x longer in bf16 than in float32 with the instruction set capped at AVX2 (``benchmarks/RESULTS.md``). So a
DiffAD run whose ``trainer.precision`` is unset gets :func:`hardware_precision`: ``bf16-mixed`` on a CPU with
native bfloat16 (or a CUDA GPU that supports it), ``32-true`` elsewhere, with a one-line notice; this applies
to the feature and patch spaces, whose presets are measured in both (the pixel space keeps float32). An explicit
``--trainer.precision`` always wins. The anomalib CLI applies it (:func:`resolve_cli_precision`, called by the
install's start-up hook); Python code passes ``Engine(precision=hardware_precision())``. Exported graphs are
float32 whatever the training precision.

Example:
    >>> hardware_precision("cpu", native_bf16=False)
    '32-true'
    >>> hardware_precision("cpu", native_bf16=True)
    'bf16-mixed'
"""

import logging
import os
from typing import Any

import torch

from anomalib_diffad.spaces import FeatureSpace, PatchSpace
from anomalib_diffad.spaces.base import space_class

logger = logging.getLogger(__name__)

ONEDNN_BF16_ISAS = frozenset({
    "ALL", "DEFAULT", "AVX512_CORE_BF16", "AVX512_CORE_FP16", "AVX512_CORE_AMX", "AVX512_CORE_AMX_FP16",
    "AVX10_1_512", "AVX10_1_512_AMX", "AVX10_1_512_AMX_FP16", "AVX10_2_512", "AVX10_2_512_AMX_2",
})  # fmt: skip
"""Values of oneDNN's ``ONEDNN_MAX_CPU_ISA`` cap that keep its bfloat16 instructions (any other value, e.g.
``AVX2`` or ``AVX512_CORE``, makes oneDNN emulate bfloat16 even on a CPU that has the instructions)."""
DIFFAD_CLASS_PATHS = frozenset({"DiffAD", "anomalib_diffad.DiffAD", "anomalib_diffad.lightning_model.DiffAD"})
SUBCOMMANDS = frozenset({"fit", "train", "validate", "test", "predict"})
AUTOCAST_SPACES = (FeatureSpace, PatchSpace)
"""Spaces whose presets are measured under bfloat16 autocast; the pixel space (the paper's: its KL compares
8-bit images at small noise levels) keeps Lightning's float32 unless a precision is given."""


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes in bfloat16 natively (AVX-512 BF16 or AMX tiles), within ``ONEDNN_MAX_CPU_ISA``."""
    cap = os.environ.get("ONEDNN_MAX_CPU_ISA", "").strip().upper()
    if cap and cap not in ONEDNN_BF16_ISAS:
        return False
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(bool(getattr(torch.cpu, probe, lambda: False)()) for probe in probes)


def hardware_precision(accelerator: str = "cpu", native_bf16: bool | None = None) -> str:
    """Lightning precision for ``accelerator``: ``"bf16-mixed"`` where bfloat16 is native, else ``"32-true"``.

    Args:
        accelerator: Lightning's accelerator setting (``"cpu"``, ``"gpu"``, ``"cuda"``, ``"auto"``, ...).
        native_bf16: Whether the CPU runs bfloat16 natively (default: :func:`cpu_has_native_bf16`).
    """
    accelerator = str(accelerator).lower()
    on_gpu = accelerator in {"gpu", "cuda"} or (accelerator == "auto" and torch.cuda.is_available())
    if on_gpu:
        return "bf16-mixed" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "32-true"
    if accelerator not in {"cpu", "auto"}:
        return "32-true"
    native = cpu_has_native_bf16() if native_bf16 is None else native_bf16
    return "bf16-mixed" if native else "32-true"


def _get(namespace: Any, key: str) -> Any:  # noqa: ANN401 - jsonargparse Namespace or dict
    return namespace.get(key) if hasattr(namespace, "get") else getattr(namespace, key, None)


def resolve_cli_precision(config: Any, native_bf16: bool | None = None) -> str | None:  # noqa: ANN401
    """Set ``trainer.precision`` of one CLI subcommand's parsed ``config`` from the hardware, if it trains or
    scores a DiffAD of the :data:`AUTOCAST_SPACES` and the user set no precision; return the precision set
    (``None``: left as it was)."""
    trainer, model = _get(config, "trainer"), _get(config, "model")
    if trainer is None or model is None or _get(trainer, "precision") is not None:
        return None
    class_path = model if isinstance(model, str) else _get(model, "class_path")
    init_args = None if isinstance(model, str) else _get(model, "init_args")
    space = _get(init_args, "space") if init_args is not None else None  # None: the pixel space
    space_path = None if space is None or isinstance(space, str) else _get(space, "class_path")
    if class_path not in DIFFAD_CLASS_PATHS or space_path is None:
        return None
    if not issubclass(space_class(space_path), AUTOCAST_SPACES):
        return None
    native = cpu_has_native_bf16() if native_bf16 is None else native_bf16
    accelerator = _get(trainer, "accelerator") or "auto"
    precision = hardware_precision(accelerator, native_bf16=native)
    trainer["precision"] = precision
    reason = "this CPU runs bfloat16 natively" if native else "no native bfloat16 on this CPU: AVX-512 BF16 or AMX"
    if str(accelerator).lower() in {"gpu", "cuda"}:
        reason = "the GPU's bfloat16 support"
    logger.info("DiffAD precision: %s (%s); --trainer.precision overrides it.", precision, reason)
    return precision
