# Copyright (C) 2026 anomalib-diffad authors
# SPDX-License-Identifier: Apache-2.0
"""What installing anomalib-diffad costs programs at start-up, and what importing it costs.

Measures (median of ``--repeats`` fresh interpreters): the start-up hook's own import time
(``python -X importtime -c pass``: the cumulative time of ``anomalib_diffad_autoload`` and the modules it
imports, with bytecode caching on as for users); ``python -c pass`` with the hook enabled and disabled;
``import anomalib.models`` alone; ``import anomalib_diffad``; and ``anomalib --help`` with and without the
plugin. Writes ``import_time.json``; with ``--startup-only`` only the first two, to ``startup_hook.json``.

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

HOOK = "anomalib_diffad_autoload"

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


def hook_import(env: dict[str, str], repeats: int) -> tuple[float, list[str]]:
    """Median cumulative import time of the start-up hook (ms) and the modules imported under it."""
    times, children = [], []
    for _ in range(repeats):
        lines = subprocess.run(
            [sys.executable, "-X", "importtime", "-c", "pass"], env=env, check=True, capture_output=True, text=True,
        ).stderr.splitlines()
        rows = [line.split("|") for line in lines if line.startswith("import time:") and "self [us]" not in line]
        names = [row[2] for row in rows]
        index = next(i for i, name in enumerate(names) if name.strip() == HOOK)
        depth = len(names[index]) - len(names[index].lstrip())
        children = []  # importtime lists a module's imports right before it, indented deeper
        for name in reversed(names[:index]):
            if len(name) - len(name.lstrip()) <= depth:
                break
            children.append(name.strip())
        times.append(int(rows[index][1]) / 1000)
    return round(statistics.median(times), 2), sorted(children)


def main() -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--startup-only", action="store_true", help="only the hook's cost (seconds, not minutes)")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "speed" / "results")
    args = parser.parse_args()
    from diffad_tools.provenance import recorded_command  # here: measurements run in fresh processes

    on = {key: value for key, value in os.environ.items() if key != "PYTHONDONTWRITEBYTECODE"}
    off = on | {"ANOMALIB_DIFFAD_AUTOLOAD": "0"}
    python = sys.executable
    hook_ms, hook_imports = hook_import(on, args.repeats)
    results = {
        "hook_import_ms": hook_ms,
        "python_pass_hook_on_ms": median_ms([python, "-c", "pass"], on, args.repeats),
        "python_pass_hook_off_ms": median_ms([python, "-c", "pass"], off, args.repeats),
    }
    if args.startup_only:
        payload = {
            "results": results,
            "modules_imported_by_hook": hook_imports,
            "command": recorded_command(sys.argv, REPO),
        }
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "startup_hook.json").write_text(json.dumps(payload, indent=2) + "\n")
        print(json.dumps(payload, indent=2))
        return
    few = max(3, args.repeats // 3)
    results |= {
        "python_pass_no_site_ms": median_ms([python, "-S", "-c", "pass"], on, args.repeats),
        "import_anomalib_models_ms": median_ms([python, "-c", "import anomalib.models"], off, few),
        "import_anomalib_diffad_ms": median_ms([python, "-c", "import anomalib_diffad"], off, few),
        "anomalib_help_plugin_on_ms": median_ms([str(ANOMALIB), "--help"], on, few),
        "anomalib_help_plugin_off_ms": median_ms([str(ANOMALIB), "--help"], off, few),
    }
    results["hook_cost_ms"] = round(results["python_pass_hook_on_ms"] - results["python_pass_hook_off_ms"], 1)
    results["plugin_import_beyond_anomalib_ms"] = round(
        results["import_anomalib_diffad_ms"] - results["import_anomalib_models_ms"], 1,
    )
    heavy = "{'torch', 'anomalib', 'anomalib_diffad'}"
    modules = subprocess.run(
        [python, "-c", f"import sys; print(sorted(m for m in sys.modules if m.split('.')[0] in {heavy}))"],
        env=on, check=True, capture_output=True, text=True,
    ).stdout.strip()
    payload = {
        "results": results,
        "modules_imported_by_hook": hook_imports,
        "heavy_modules_loaded_by_plain_python": json.loads(modules.replace("'", '"')),
        "command": recorded_command(sys.argv, REPO),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "import_time.json").write_text(json.dumps(payload, indent=2) + "\n")
    print(json.dumps(payload, indent=2))


if __name__ == "__main__":
    main()
