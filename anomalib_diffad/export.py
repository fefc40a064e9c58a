# Copyright (C) 2026 anomalib-diffad authors
# SPDX-License-Identifier: Apache-2.0
"""Export of DiffAD: anomalib's torch, ONNX and OpenVINO exports, fitted to the diffusion graph.

:class:`DiffADExportMixin` overrides anomalib's ``ExportMixin`` methods; :class:`~anomalib_diffad.DiffAD` inherits
it before ``AnomalibModule``. The ONNX and OpenVINO graphs take images of any size (or a fixed ``input_size``)
and any batch; a unified model writes one graph per category; the OpenVINO outputs keep their
``InferenceBatch`` names; INT8 quantization touches only convolutions and matrix products, INT8 weight
compression every weight but the input resize's.
"""

import functools
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import TYPE_CHECKING, Any

import torch
from anomalib.data import AnomalibDataModule, InferenceBatch

from anomalib_diffad.data.multi import MultiCategory
from anomalib_diffad.pre_processor import resizes_to_fixed_size

if TYPE_CHECKING:
    import openvino
    from anomalib.deploy import CompressionType

logger = logging.getLogger(__name__)

QUANTIZED_OP_TYPES = frozenset({"Convolution", "GroupConvolution", "MatMul"})
"""OpenVINO operations that INT8 post-training quantization (``CompressionType.INT8_PTQ``) may quantize."""


def checked_input_size(input_size: Sequence[int]) -> tuple[int, int]:
    """``input_size`` as ``(height, width)``.

    Raises:
        ValueError: If it is not two positive integers.
    """
    size = tuple(input_size)
    if len(size) != 2 or not all(isinstance(side, int) and not isinstance(side, bool) and side > 0 for side in size):
        msg = (
            f"input_size must be two positive integers (height, width), got {input_size!r}. Leave it out "
            "(CLI: no --input_size) to export a graph that takes images of any size."
        )
        raise ValueError(msg)
    return (size[0], size[1])


def image_resize_products(model: "openvino.Model") -> list[str]:
    """Names of the ``MatMul`` operations on 4-D tensors: the pre-processor's resize to the model's size.

    The graph resizes an image of any size with products by interpolation matrices that depend on its size.
    Compressing those to INT8 gains nothing, and OpenVINO 2026.4's CPU plugin refuses to compile a
    weight-compressed product of a 4-D input ("Check 'any_of(scale.size(), OC, 1U)' failed").
    """
    return [
        op.get_friendly_name()
        for op in model.get_ops()
        if op.get_type_name() == "MatMul"
        and any(op.input(i).get_partial_shape().rank.get_length() == 4 for i in range(2))
    ]


def keep_resize_products_in_float(model: "openvino.Model") -> None:
    """Give the input resize's products their interpolation matrices back in float32 after FP16 compression.

    With a fixed ``input_size`` those matrices are constants, FP16 compression stores them as ``f16`` behind a
    ``Convert``, and OpenVINO 2026.4's CPU plugin then refuses to compile the model (as for INT8, see
    :func:`image_resize_products`).
    """
    import numpy as np  # noqa: PLC0415
    from openvino import op as ov_op  # noqa: PLC0415

    resize = set(image_resize_products(model))
    for node in model.get_ops():
        if node.get_friendly_name() not in resize:
            continue
        for index in range(2):
            source = node.input_value(index).get_node()
            if source.get_type_name() == "Convert" and source.input_value(0).get_node().get_type_name() == "Constant":
                matrix = source.input_value(0).get_node().get_data().astype(np.float32)
                node.input(index).replace_source_output(ov_op.Constant(matrix).output(0))


def rename_openvino_outputs(path: Path, compression_type: "CompressionType | None" = None) -> None:
    """Leave each output tensor of the OpenVINO IR at ``path`` with exactly its ``InferenceBatch`` name (after
    FP16 compression, also give the input resize its float32 matrices back: :func:`keep_resize_products_in_float`).

    OpenVINO's constant folding of the post-processor's ``where`` guards merges internal tensor names into the
    outputs; ``OpenVINOInferencer`` takes an arbitrary name of each set, so it could return ``where_12`` instead
    of ``anomaly_map``.
    """
    import openvino as ov  # noqa: PLC0415
    from anomalib.deploy import CompressionType  # noqa: PLC0415

    model = ov.Core().read_model(path)
    if compression_type == CompressionType.FP16:
        keep_resize_products_in_float(model)
    for output in model.outputs:
        names = output.get_names() & set(InferenceBatch._fields)
        if len(names) == 1:
            output.get_tensor().set_names(names)
    with TemporaryDirectory(dir=path.parent) as tmp:
        renamed = Path(tmp) / path.name
        ov.save_model(model, renamed, compress_to_fp16=False)  # weights keep the precision they were given
        del model
        renamed.replace(path)
        renamed.with_suffix(".bin").replace(path.with_suffix(".bin"))


def quantize_products(model: "openvino.Model", datamodule: AnomalibDataModule | None) -> "openvino.Model":
    """NNCF INT8 post-training quantization of the convolutions and matrix products only.

    anomalib's version lets NNCF quantize every operation it supports, including the elementwise arithmetic of
    the reverse-posterior KL (log-variances, squared differences) and of the post-processor's normalization.
    Here everything but ``Convolution``, ``GroupConvolution`` and ``MatMul`` (nearly all of the compute) stays in
    floating point, and so do the input resize's products (:func:`image_resize_products`). Calibrates on the
    validation images, as anomalib does.

    Args:
        model: OpenVINO model of the whole pipeline (pre-processor, model, post-processor).
        datamodule: Datamodule whose validation images calibrate the activation ranges.

    Returns:
        The quantized model.

    Raises:
        ValueError: If ``datamodule`` is missing or has no validation images.
    """
    import nncf  # noqa: PLC0415

    if datamodule is None:
        msg = "INT8_PTQ needs calibration images: pass a datamodule (--data in the CLI)."
        raise ValueError(msg)
    datamodule.setup("fit")
    dataloader = datamodule.val_dataloader()
    if len(dataloader.dataset) == 0:
        msg = "INT8_PTQ calibrates on the validation images, and the datamodule has none."
        raise ValueError(msg)
    if len(dataloader.dataset) < 300:
        logger.warning("INT8_PTQ calibrates on %d images; 300 or more are recommended.", len(dataloader.dataset))
    ignored = sorted({op.get_type_name() for op in model.get_ops()} - QUANTIZED_OP_TYPES)
    return nncf.quantize(
        model,
        nncf.Dataset(dataloader, lambda batch: batch["image"]),
        subset_size=len(dataloader),
        ignored_scope=nncf.IgnoredScope(types=ignored, names=image_resize_products(model), validate=False),
    )


def check_quantizable(post_processor: torch.nn.Module | None, compression_type: "CompressionType | None") -> None:
    """Check that a model about to be quantized (INT8 PTQ or ACQ) is calibrated.

    OpenVINO's low-precision passes fail to compile a graph whose normalization constants are still NaN.

    Raises:
        ValueError: The post-processor's statistics are NaN (no validation yet).
    """
    from anomalib.deploy import CompressionType  # noqa: PLC0415

    quantized = compression_type in {CompressionType.INT8_PTQ, CompressionType.INT8_ACQ}
    if quantized and bool(torch.isnan(getattr(post_processor, "image_min", torch.zeros(()))).any()):
        msg = (
            "INT8 post-training quantization needs a calibrated model, and this one has no thresholds or "
            "normalization statistics yet (they are NaN): export a checkpoint written after validation "
            "(anomalib train/fit validates at the end), or run `anomalib validate` on it first."
        )
        raise ValueError(msg)


def per_category(export: Callable[..., Path]) -> Callable[..., Path]:
    """Make an export method write one graph per category when the model is unified and no category is selected.

    The wrapped method then runs once per category, with that category selected, into
    ``<export_root>/<category>``, and returns ``export_root``.
    """

    @functools.wraps(export)
    def export_each(self: "DiffADExportMixin", export_root: Path | str, *args: Any, **kwargs: Any) -> Path:  # noqa: ANN401
        categories = self.categories
        if categories.num_classes is None or categories.selected is not None:
            return export(self, export_root, *args, **kwargs)
        for index, name in enumerate(categories.all_names):
            with categories.selection(index):
                export(self, Path(export_root) / name, *args, **kwargs)
        return Path(export_root)

    return export_each


class DiffADExportMixin:
    """Export overrides of :class:`~anomalib_diffad.DiffAD`; list it before ``AnomalibModule`` in the bases.

    Uses the module's ``model`` (``DiffADModel``), ``post_processor`` and ``categories``
    (:class:`~anomalib_diffad.unified.Categories`).
    """

    @per_category
    def to_torch(self, export_root: Path | str, model_file_name: str = "model") -> Path:
        """anomalib's torch export; a unified model without a selected category writes one file per category.

        ``anomalib export --ckpt_path`` reloads the checkpoint with its saved arguments, so a unified model
        reaches the export with no category selected: it then writes ``<export_root>/<category>/weights/...``
        for every category (``categories.select`` first to export one).
        """
        return super().to_torch(export_root, model_file_name)

    @per_category
    def to_onnx(
        self,
        export_root: Path | str,
        model_file_name: str = "model",
        input_size: tuple[int, int] | None = None,
        **kwargs: Any,  # noqa: ANN401
    ) -> Path:
        """Export to ONNX with a dynamic batch, and a dynamic or the given input size.

        Without ``input_size`` the graph takes images of any height and width: the pre-processor resizes them to
        ``image_size`` inside it, so everything after it (scoring noise, smoothing) sees fixed sizes. A
        pre-processor that resizes to no fixed size keeps the input at ``image_size``. With ``input_size`` the
        input is fixed at that ``(height, width)`` (still resized to ``image_size`` inside).

        ``torch.export`` must trace the batch bounded: diffusers' upsampler branches on ``batch >= 64`` (a
        ``contiguous()``, a no-op in the graph), and the batch times the scoring timesteps stays below 64
        during tracing. The bound only lives in the trace: ONNX dimensions carry none, so the exported file
        takes any batch. A unified model without a selected category writes one graph per category (see
        :meth:`to_torch`).

        Raises:
            ValueError: If ``input_size`` is not two positive integers.
        """
        max_batch = max(1, 63 // len(self.model.score_timesteps))
        axes = {0: torch.export.Dim("batch", min=1, max=max_batch)}
        if input_size is not None:
            input_size = checked_input_size(input_size)
        elif resizes_to_fixed_size(getattr(self.pre_processor, "export_transform", None)):
            axes |= {2: torch.export.Dim("height", min=2), 3: torch.export.Dim("width", min=2)}
        kwargs.setdefault("dynamic_shapes", (axes,))
        return super().to_onnx(export_root, model_file_name, input_size or self.model.image_size, **kwargs)

    @per_category
    def to_openvino(
        self,
        export_root: Path | str,
        model_file_name: str = "model",
        input_size: tuple[int, int] | None = None,
        **kwargs: Any,  # noqa: ANN401
    ) -> Path:
        """Export to OpenVINO IR, then leave each output tensor with exactly its ``InferenceBatch`` name
        (:func:`rename_openvino_outputs`).

        INT8 post-training quantization requires a calibrated model (:func:`check_quantizable`). A unified model
        without a selected category writes one graph per category (see :meth:`to_torch`).
        """
        check_quantizable(self.post_processor, kwargs.get("compression_type"))
        path = super().to_openvino(export_root, model_file_name, input_size, **kwargs)
        rename_openvino_outputs(path, kwargs.get("compression_type"))
        return path

    def _compress_ov_model(
        self,
        model: "openvino.Model",
        compression_type: "CompressionType | None" = None,
        datamodule: AnomalibDataModule | None = None,
        *args: Any,  # noqa: ANN401
        **kwargs: Any,  # noqa: ANN401
    ) -> "openvino.Model":
        """anomalib's NNCF compression; INT8 weight compression leaves the input resize out
        (:func:`image_resize_products`)."""
        from anomalib.deploy import CompressionType  # noqa: PLC0415

        if compression_type != CompressionType.INT8:
            return super()._compress_ov_model(model, compression_type, datamodule, *args, **kwargs)
        import nncf  # noqa: PLC0415

        return nncf.compress_weights(model, ignored_scope=nncf.IgnoredScope(names=image_resize_products(model)))

    def _post_training_quantization_ov(
        self,
        model: "openvino.Model",
        datamodule: AnomalibDataModule | None = None,
    ) -> "openvino.Model":
        """INT8 quantization of the convolutions and matrix products only (:func:`quantize_products`); a unified
        model's graph calibrates on its selected category's images when the datamodule is a ``MultiCategory``."""
        if isinstance(datamodule, MultiCategory) and self.categories.selected is not None:
            datamodule = datamodule.for_category(self.categories.all_names[self.categories.selected])
        return quantize_products(model, datamodule)
