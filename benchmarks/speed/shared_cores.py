# Copyright (C) 2026 anomalib-diffad authors
# SPDX-License-Identifier: Apache-2.0
"""Training-step time of the feature preset when its cores are shared with busy processes.

Each configuration (torch threads, busy background processes, precision, OpenMP wait policy) runs in a fresh
subprocess, so that the thread count and ``OMP_WAIT_POLICY`` apply from the start: the feature preset
(``configs/diffad_feature.yaml``) at ``--size`` px on a batch of ``--batch`` random images, one warm-up step,
then the median of ``--steps`` timed optimizer steps. The background processes are busy loops
(``while :; do :; done``) started before and killed after each configuration. A configuration that does not
finish in ``--limit`` seconds is recorded as such. Writes ``<out>/shared_cores.json``
(``benchmarks/speed/results/shared_cores.json`` gathers several runs, each with its command).

Example:
    python benchmarks/speed/shared_cores.py --out benchmarks/speed/results
"""

import argparse
import itertools
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

from diffad_tools.provenance import recorded_command

REPO = Path(__file__).resolve().parents[2]

STEP_TIMES = """
import json, sys, time, torch, yaml
from anomalib_diffad import DiffAD
from diffad_tools.callbacks import fit_threads_to_idle_cores
size, batch, steps, bf16 = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4] == "bf16"
fit_threads_to_idle_cores()  # what IdleCoreThreads does at a fit's start; no-op when OMP_NUM_THREADS is set
args = yaml.safe_load(open("configs/diffad_feature.yaml"))["model"]["init_args"]
model = DiffAD(**(args | {"image_size": size, "pretrained_weights": None}))
images = torch.rand(batch, 3, size, size) * 2 - 1
optimizer = torch.optim.AdamW(model.model.denoiser.parameters(), lr=1e-4)
model.model.train()
times = []
for _ in range(steps + 1):
    start = time.perf_counter()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        loss = model.loss(model.model(images))["loss"]
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    times.append(time.perf_counter() - start)
print(json.dumps({"threads": torch.get_num_threads(), "times": times[1:]}))
"""


def run_configuration(threads: str, busy: int, precision: str, policy: str, args: argparse.Namespace) -> dict:
    """Step times of one configuration, with ``busy`` busy loops running beside it.

    ``threads`` ``"auto"``: ``OMP_NUM_THREADS`` unset, so the threads are fitted to the idle cores (as
    ``diffad_tools.callbacks.IdleCoreThreads`` does).
    """
    env = os.environ | {"OMP_NUM_THREADS": threads, "PYTHONPATH": str(REPO)}
    if threads == "auto":
        del env["OMP_NUM_THREADS"]
    if policy != "default":
        env["OMP_WAIT_POLICY"] = policy
    loops = [subprocess.Popen(["sh", "-c", "while :; do :; done"]) for _ in range(busy)]
    started = time.perf_counter()
    try:
        result = subprocess.run(
            [sys.executable, "-c", STEP_TIMES, str(args.size), str(args.batch), str(args.steps), precision],
            env=env,
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=args.limit,
            check=True,
        )
        output = json.loads(result.stdout.strip().splitlines()[-1])
        times = output["times"]
        entry = {"median_step_s": round(statistics.median(times), 3), "step_s": [round(t, 3) for t in times]}
        entry["torch_threads"] = output["threads"]
    except subprocess.TimeoutExpired:
        entry = {"median_step_s": None, "timed_out_after_s": args.limit}
    finally:
        for loop in loops:
            loop.kill()
            loop.wait()
    entry |= {"threads": threads, "busy_processes": busy, "precision": precision, "omp_wait_policy": policy}
    entry["wall_s"] = round(time.perf_counter() - started, 1)
    entry["load_average_after"] = round(os.getloadavg()[0], 2)
    print(json.dumps(entry), flush=True)
    return entry


def main() -> None:
    """Run every configuration and write the JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--threads", nargs="+", default=["1", "2", "auto"], help="counts, or 'auto' (see above)")
    parser.add_argument("--busy", type=int, nargs="+", default=[0, 2])
    parser.add_argument("--precisions", nargs="+", default=["bf16", "fp32"])
    parser.add_argument("--policies", nargs="+", default=["default"], help="OMP_WAIT_POLICY values ('default': unset)")
    parser.add_argument("--limit", type=float, default=90.0, help="seconds allowed per configuration")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    grid = itertools.product(args.precisions, args.busy, args.threads, args.policies)
    rows = [run_configuration(threads, busy, precision, policy, args) for precision, busy, threads, policy in grid]
    result = {
        "command": recorded_command(sys.argv, REPO),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "affinity": len(os.sched_getaffinity(0))},
        "settings": {
            "preset": "configs/diffad_feature.yaml",
            "size": args.size,
            "batch": args.batch,
            "steps": args.steps,
        },
        "rows": rows,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "shared_cores.json").write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
