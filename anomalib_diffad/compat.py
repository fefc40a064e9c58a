# Copyright (C) 2026 anomalib-diffad authors
# SPDX-License-Identifier: Apache-2.0
"""Fix for an anomalib 2.7 bug that stops ``anomalib benchmark`` from comparing different models.

``BenchmarkJob.collect`` builds its table from the keys of the *first* job's result and raises ``KeyError`` on
any other key, so a grid whose models have different ``init_args`` or different test metrics (DiffAD's
AUPRO) loses every result at the end of the run. The replacement builds the same table with the union of the
keys (missing values empty); for results with identical keys it is unchanged.
"""

from typing import Any

import pandas as pd
from anomalib.pipelines.benchmark.job import BenchmarkJob


def collect_results(results: list[dict[str, Any]]) -> pd.DataFrame:
    """One row per benchmark job, one column per key any job reported, first job's keys first."""
    return pd.DataFrame(results)


def patch_benchmark_collect() -> None:
    """Make ``BenchmarkJob.collect`` tolerate results with different keys."""
    BenchmarkJob.collect = staticmethod(collect_results)
