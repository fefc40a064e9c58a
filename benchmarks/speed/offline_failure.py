# Copyright (C) 2026 anomalib-diffad authors
# SPDX-License-Identifier: Apache-2.0
"""How fast missing pretrained weights fail offline (the tests check only that nothing is downloaded).

One fresh process per case (huggingface_hub reads ``HF_HUB_OFFLINE`` when it is imported), median of
``--repeats`` calls: with ``HF_HUB_OFFLINE=1``, ``hub_reachable()`` and ``load_pretrained_weights(...,
"timm")``; without it, ``load_pretrained_weights(..., "timm")`` behind the real connection probe
(``hub_reachable(timeout=3.0)``; on a machine that reaches the hub it downloads instead, outcome ``ok``).
The tests check only that no connection or download is tried. Writes ``offline_failure.json``.

Example:
    python benchmarks/speed/offline_failure.py --out benchmarks/speed/results
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from anomalib.models.components import TimmFeatureExtractor

from anomalib_diffad import backbone
from anomalib_diffad.backbone import PretrainedWeightsError, load_pretrained_weights

REPO = Path(__file__).resolve().parents[2]


def median_ms(action: Callable[[], object], repeats: int) -> tuple[float, str]:
    """Median wall time of ``action`` in milliseconds, and how it ended (``ok`` or the error's class)."""
    times, outcome = [], "ok"
    for _ in range(repeats):
        start = time.perf_counter()
        try:
            action()
        except PretrainedWeightsError as error:
            outcome = type(error).__name__
        times.append(time.perf_counter() - start)
    return round(1000 * statistics.median(times), 4), outcome


def measure(repeats: int) -> dict[str, float | str]:
    """This process's timings (its ``HF_HUB_OFFLINE`` was set before anything imported huggingface_hub)."""
    extractor = TimmFeatureExtractor("resnet18", layers=["layer1"], pre_trained=False)
    results: dict[str, float | str] = {}
    if os.environ.get("HF_HUB_OFFLINE") == "1":
        results["hub_reachable_ms"] = median_ms(backbone.hub_reachable, repeats)[0]
    results["timm_weights_ms"], results["timm_weights_outcome"] = median_ms(
        lambda: load_pretrained_weights(extractor, "timm"), repeats
    )
    return results


def main() -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "speed" / "results")
    parser.add_argument("--measure", action="store_true", help="measure in this process and print JSON")
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measure(args.repeats)))
        return
    environment = {key: value for key, value in os.environ.items() if key != "HF_HUB_OFFLINE"}
    results = {}
    for case, extra in (("hf_hub_offline", {"HF_HUB_OFFLINE": "1"}), ("connection_probe", {})):
        output = subprocess.run(
            [sys.executable, __file__, "--measure", "--repeats", str(args.repeats)],
            env=environment | extra,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        results[case] = json.loads(output.strip().splitlines()[-1])
    payload = {"results": results, "command": "python " + " ".join(sys.argv)}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "offline_failure.json").write_text(json.dumps(payload, indent=2) + "\n")
    print(json.dumps(payload, indent=2))


if __name__ == "__main__":
    main()
