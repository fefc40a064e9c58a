# Copyright (C) 2026 anomalib-diffad authors
# SPDX-License-Identifier: Apache-2.0
"""anomalib's DRAEM with a training budget and image size that a model config can set, for ``anomalib benchmark``.

``anomalib benchmark`` builds each job's ``Engine`` without trainer arguments, so the only training length a
config can choose is what the model's ``trainer_arguments`` say; DRAEM says nothing, which means Lightning's
default of 1000 epochs (days on a CPU); and its init arguments cannot build a pre-processor, so the image size
stays DRAEM's default 256 px. ``BudgetDraem`` is DRAEM unchanged plus ``max_epochs`` and ``image_size``.
"""

from collections.abc import Sequence
from typing import Any

from anomalib.models import Draem


class BudgetDraem(Draem):
    """DRAEM trained for ``max_epochs`` epochs (DRAEM's paper trains 700) at ``image_size``.

    Args:
        max_epochs: Training epochs.
        image_size: Size DRAEM's default pre-processor resizes to (``None``: 256 px); ignored when
            ``pre_processor`` is given.
        **kwargs: DRAEM's arguments (``dtd_dir``, ``beta``, ``pre_processor``, ...).

    Example:
        >>> import tempfile
        >>> model = BudgetDraem(max_epochs=2, dtd_dir=tempfile.mkdtemp())
        >>> model.trainer_arguments["max_epochs"]
        2
    """

    def __init__(self, max_epochs: int = 700, image_size: int | Sequence[int] | None = None, **kwargs: Any) -> None:  # noqa: ANN401
        if image_size is not None and kwargs.get("pre_processor", True) is True:
            size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
            kwargs["pre_processor"] = self.configure_pre_processor(size)
        super().__init__(**kwargs)
        self.max_epochs = max_epochs

    @property
    def trainer_arguments(self) -> dict[str, Any]:
        """DRAEM's trainer arguments plus ``max_epochs``."""
        return super().trainer_arguments | {"max_epochs": self.max_epochs}
