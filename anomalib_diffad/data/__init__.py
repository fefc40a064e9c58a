# Copyright (C) 2026 anomalib-diffad authors
# SPDX-License-Identifier: Apache-2.0

"""Datasets shipped with anomalib-diffad.

Exports are resolved lazily so that ``python -m anomalib_diffad.data.textures``
does not import the module twice.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from anomalib_diffad.data.textures import DEFECT_TYPES, TEXTURE_CATEGORIES, generate_texture_dataset

__all__ = ["DEFECT_TYPES", "TEXTURE_CATEGORIES", "generate_texture_dataset"]


def __getattr__(name: str) -> Any:  # noqa: ANN401
    """Import the public names from :mod:`anomalib_diffad.data.textures` on first use."""
    if name in __all__:
        from anomalib_diffad.data import textures  # noqa: PLC0415

        return getattr(textures, name)
    msg = f"module {__name__!r} has no attribute {name!r}"
    raise AttributeError(msg)
