"""Why a CPU engine slows down beside busy programs: per 1024² image, wall and CPU time, the threads' time waiting
in the run queue, context switches and (with gomp_regions.c preloaded) the number and length of OpenMP regions.

    python benchmarks/profiling/load_profile.py [--busy 0,1,2] [--runs 3] [--engines eager,fast] [--threads 2,1]

``--threads`` runs each engine with torch set to each thread count (the fast engine's own thread governor is
bypassed, so that the thread count is the one given). Linux only (/proc). Run OMP_WAIT_POLICY=PASSIVE to see what
spinning at barriers costs. Findings: benchmarks/README.md, "Under load".
"""

from __future__ import annotations

import argparse
import ctypes
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from benchmark import load_benchmark_model, reference_image  # noqa: E402

from DeLightSAMLib.engines import build_runner  # noqa: E402
from DeLightSAMLib.transforms import ImageTransform  # noqa: E402


def thread_counters() -> dict[str, tuple[int, ...]]:
    """Per thread of this process: (run ns, run-queue wait ns, voluntary and involuntary context switches)."""
    counters = {}
    for thread in os.listdir("/proc/self/task"):
        with open(f"/proc/self/task/{thread}/schedstat") as stat:
            run, wait, _ = (int(value) for value in stat.read().split())
        with open(f"/proc/self/task/{thread}/status") as status:
            fields = dict(line.split(":", 1) for line in status if ":" in line)
        counters[thread] = (
            run,
            wait,
            int(fields["voluntary_ctxt_switches"]),
            int(fields["nonvoluntary_ctxt_switches"]),
        )
    return counters


def difference(before, after) -> list[int]:
    total = [0, 0, 0, 0]
    for thread, values in after.items():
        for index, value in enumerate(values):
            total[index] += value - before.get(thread, (0, 0, 0, 0))[index]
    return total


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--busy", default="0,1,2")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--engines", default="eager,fast")
    parser.add_argument("--threads", default=str(torch.get_num_threads()))
    parser.add_argument(
        "--checkpoint", default=str(REPO.parent / "shared" / "reference" / "reference_weights_seed1234.pth")
    )
    args = parser.parse_args()
    regions = None
    if "gomp_regions" in os.environ.get("LD_PRELOAD", ""):
        regions = ctypes.CDLL(next(p for p in os.environ["LD_PRELOAD"].split(":") if "gomp_regions" in p))
        for name in ("gomp_regions_count", "gomp_regions_ns", "gomp_regions_histogram"):
            getattr(regions, name).restype = ctypes.c_ulonglong
    model = load_benchmark_model(args.checkpoint if Path(args.checkpoint).is_file() else "random")
    image = ImageTransform().prepare(reference_image())
    runners = {name: build_runner(model, name) for name in args.engines.split(",")}
    runners = {name: getattr(runner, "model", runner) for name, runner in runners.items()}  # no thread governor
    most = torch.get_num_threads()
    with torch.inference_mode():
        for runner in runners.values():
            runner(image)
        for busy in (int(count) for count in args.busy.split(",")):
            hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(busy)]
            time.sleep(1.0)
            try:
                for _ in range(args.runs):
                    for name, runner in runners.items():
                        for threads in (int(count) for count in args.threads.split(",")):
                            torch.set_num_threads(threads)
                            if regions is not None:
                                regions.gomp_regions_reset()
                            before, cpu, start = thread_counters(), time.process_time(), time.perf_counter()
                            runner(image)
                            wall, cpu = time.perf_counter() - start, time.process_time() - cpu
                            _, wait, voluntary, involuntary = difference(before, thread_counters())
                            line = (
                                f"{busy} busy, {name:>6} {threads} thread(s): {wall:6.2f} s wall, {cpu:6.2f} s CPU, "
                                f"{wait / 1e9:6.2f} s waiting to run, {voluntary} voluntary and {involuntary} "
                                "involuntary context switches"
                            )
                            if regions is not None:
                                count = regions.gomp_regions_count()
                                lengths = [regions.gomp_regions_histogram(b) for b in range(32)]
                                median_bucket = (
                                    next(b for b in range(32) if sum(lengths[: b + 1]) >= count / 2) if count else 0
                                )
                                line += (
                                    f", {count} parallel regions ({regions.gomp_regions_ns() / 1e9:.2f} s inside, "
                                    f"median {2**median_bucket / 1e3:.0f}-{2 ** (median_bucket + 1) / 1e3:.0f} µs)"
                                )
                            print(line, flush=True)
            finally:
                torch.set_num_threads(most)
                for hog in hogs:
                    hog.kill()
                    hog.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
