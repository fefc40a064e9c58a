# Copyright (C) 2026 anomalib-diffad authors
# SPDX-License-Identifier: Apache-2.0
"""Spaces as plain data: ``space_from_config`` and the errors for a dict that names no space."""

import pytest

from anomalib_diffad.spaces import PatchSpace, PixelSpace, space_from_config


def test_a_config_without_init_args_gets_the_defaults() -> None:
    """``init_args`` may be left out (``configs/benchmark.yaml``'s patch row): the space's defaults; a bare class
    name is one of :mod:`anomalib_diffad.spaces`, the full path through the defining module works too."""
    space = space_from_config({"class_path": "anomalib_diffad.spaces.PatchSpace"})
    assert space.to_config() == PatchSpace().to_config()
    assert space_from_config({"class_path": "PatchSpace", "init_args": {"mlp_width": 8}}).mlp_width == 8
    assert space_from_config({"class_path": "anomalib_diffad.spaces.unet.PixelSpace"}).to_config() == (
        PixelSpace().to_config()
    )


@pytest.mark.parametrize(
    ("config", "error", "message"),
    [
        ({"init_args": {"mlp_width": 8}}, ValueError, "A DiffAD space is given as"),
        ({"class_path": "anomalib_diffad.spaces.Voxel"}, ValueError, "'anomalib_diffad.spaces.Voxel' cannot be"),
        ({"class_path": "Patch"}, ValueError, "'Patch' cannot be imported"),
        ({"class_path": "anomalib_diffad.DiffAD"}, TypeError, "'anomalib_diffad.DiffAD' is not a DiffusionSpace"),
        ({"class_path": "anomalib_diffad.spaces.PatchSpace", "init_args": {"width": 8}}, TypeError, "width"),
    ],
)
def test_a_config_that_names_no_space_is_refused(config: dict, error: type, message: str) -> None:
    """No ``class_path``, one that does not import, one that is no space, or a setting the space does not take."""
    with pytest.raises(error, match=message):
        space_from_config(config)
