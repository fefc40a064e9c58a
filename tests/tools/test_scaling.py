# Copyright (C) 2026 anomalib-diffad authors
# SPDX-License-Identifier: Apache-2.0
"""The scaling benchmark's crossing points and DiffAD's batch of 2048 patch vectors."""

import pytest

from benchmarks.speed.scaling import first_crossing, patch_batch_size


def test_crossing_is_interpolated_in_log_n() -> None:
    """Between two counts the crossing lies where the difference, linear in log N, is zero."""
    assert first_crossing([100, 1000], [10.0, 10.0], [5.0, 15.0]).n == 316  # halfway in log N
    assert first_crossing([10, 100, 1000], [10.0, 10.0, 10.0], [1.0, 9.0, 19.0]).n == 126  # 1/10 of the way from 100
    assert first_crossing([100, 1000], [10.0, 10.0], [15.0, 20.0]).how == "at or below the smallest N measured"


def test_crossing_without_a_value_above_is_none() -> None:
    """Never above within the counts: ``None``; missing values are skipped."""
    assert first_crossing([100, 1000], [10.0, 10.0], [5.0, 9.0]).n is None
    assert first_crossing([10, 100, 1000], [10.0, None, 10.0], [5.0, 50.0, 15.0]).n == 100  # 10 and 1000 only
    assert first_crossing([100, 1000], [None, None], [5.0, 15.0]).how == "no N with both values"


def test_a_capped_value_bounds_the_crossing() -> None:
    """A lower bound above the base makes the crossing an upper bound; one below it leaves it unknown."""
    above = first_crossing([100, 1000], [10.0, 10.0], [5.0, 15.0], [False, True])
    assert above.n == 316
    assert "at most" in above.how
    below = first_crossing([100, 1000], [10.0, 10.0], [5.0, 8.0], [False, True])
    assert below.n is None
    assert below.how.startswith("unknown")


@pytest.mark.parametrize(("size", "batch"), [(64, 32), (128, 8), (256, 2), (512, 1)])
def test_patch_batch_holds_2048_vectors(size: int, batch: int) -> None:
    """One vector per 8 px: 2 images at 256 px, 8 at 128 px, at least one image."""
    assert patch_batch_size(size) == batch
