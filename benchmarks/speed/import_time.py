# Copyright (C) 2026 anomalib-diffad authors
# SPDX-License-Identifier: Apache-2.0
"""What installing anomalib-diffad costs programs at start-up, and what importing it costs.

Measures (median of ``--repeats`` fresh interpreters): ``python -c pass`` with the start-up hook
(``anomalib_diffad.pth``) enabled and disabled; ``import anomalib.models`` alone; ``import anomalib_diffad``;
and ``anomalib --help`` with and without the plugin. Writes ``import_time.json``.

Example:
    python benchmarks/speed/import_time.py --out benchmarks/speed/results
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
ANOMALIB = Path(sys.executable).parent / "anomalib"


def median_ms(command: list[str], env: dict[str, str], repeats: int) -> float:
    """Median wall time of a fresh process, in milliseconds."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run(command, env=env, check=True, capture_output=True)
        times.append(time.perf_counter() - start)
    return round(1000 * statistics.median(times), 1)


def main() -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "speed" / "results")
    args = parser.parse_args()
    on, off = dict(os.environ), dict(os.environ) | {"ANOMALIB_DIFFAD_AUTOLOAD": "0"}
    python = sys.executable
    results = {
        "python_pass_hook_on_ms": median_ms([python, "-c", "pass"], on, args.repeats),
        "python_pass_hook_off_ms": median_ms([python, "-c", "pass"], off, args.repeats),
        "python_pass_no_site_ms": median_ms([python, "-S", "-c", "pass"], on, args.repeats),
        "import_anomalib_models_ms": median_ms([python, "-c", "import anomalib.models"], off, max(3, args.repeats // 3)),
        "import_anomalib_diffad_ms": median_ms([python, "-c", "import anomalib_diffad"], off, max(3, args.repeats // 3)),
        "anomalib_help_plugin_on_ms": median_ms([str(ANOMALIB), "--help"], on, max(3, args.repeats // 3)),
        "anomalib_help_plugin_off_ms": median_ms([str(ANOMALIB), "--help"], off, max(3, args.repeats // 3)),
    }
    results["hook_cost_ms"] = round(results["python_pass_hook_on_ms"] - results["python_pass_hook_off_ms"], 1)
    results["plugin_import_beyond_anomalib_ms"] = round(
        results["import_anomalib_diffad_ms"] - results["import_anomalib_models_ms"], 1,
    )
    modules = subprocess.run(
        [python, "-c", "import sys; print(sorted(m for m in sys.modules if m.split('.')[0] in {'torch', 'anomalib', 'anomalib_diffad'}))"],
        env=on, check=True, capture_output=True, text=True,
    ).stdout.strip()
    payload = {
        "results": results,
        "heavy_modules_loaded_by_plain_python": json.loads(modules.replace("'", '"')),
        "command": "python " + " ".join(sys.argv),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "import_time.json").write_text(json.dumps(payload, indent=2) + "\n")
    print(json.dumps(payload, indent=2))


if __name__ == "__main__":
    main()
