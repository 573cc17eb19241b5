"""Time every inference path on the same inputs in one process and compare it with the plain eager path.

    python benchmarks/benchmark.py [--checkpoint PATH] [--repeats 5] [--onnx] [--int8] [--compile] [--load 0,1,2]

Prints a table (median, min, max seconds; ratio to eager; largest logit difference; mask agreement; peak
memory) and writes it to benchmarks/results/latest.md and .json. Timings are medians of wall-clock seconds;
the ratio is against the eager float32 path measured in the same run, on the same machine. No test asserts a
time: the tests check that every path gives the eager path's masks.

``--load 0,1,2`` adds a table measured beside 0, 1 and 2 busy processes (``python -c "while True: pass"``, started
and killed by the benchmark): eager and the default engine alternating, ``--repeats`` runs each, medians, maxima
and the CPU time each run took.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from DeLightSAMLib.checkpoint import load_model  # noqa: E402
from DeLightSAMLib.engines import AUTO, build_runner, get_engine  # noqa: E402
from DeLightSAMLib.predictor import Predictor  # noqa: E402
from DeLightSAMLib.transforms import ImageTransform  # noqa: E402

REFERENCE = REPO.parent / "shared" / "reference"


# ---------------------------------------------------------------------------------------------- inputs
def synthetic_images(seed: int = 0) -> dict[str, np.ndarray]:
    """Images that look like the modalities (shapes, intensities, noise), made here so nothing is downloaded."""
    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[0:450, 0:600]
    blob = ((rows - 230) / 140) ** 2 + ((cols - 310) / 190) ** 2 + 0.15 * np.sin(cols / 17) < 1
    skin = np.stack([np.full(blob.shape, 220.0), np.full(blob.shape, 170.0), np.full(blob.shape, 150.0)], -1)
    skin[blob] = (120, 70, 55)
    dermoscopy = np.clip(skin + rng.normal(0, 8, skin.shape), 0, 255).astype(np.uint8)
    rows, cols = np.mgrid[0:512, 0:512]
    lungs = (((rows - 260) / 170) ** 2 + ((cols - 160) / 80) ** 2 < 1) | (
        ((rows - 260) / 170) ** 2 + ((cols - 352) / 80) ** 2 < 1
    )
    xray = (2600 + 600 * rows / 512 - 1500 * lungs + rng.normal(0, 60, lungs.shape)).astype(np.uint16)
    rows, cols = np.mgrid[0:400, 0:500]
    cyst = ((rows - 200) / 60) ** 2 + ((cols - 250) / 90) ** 2 < 1
    ultrasound = np.clip(rng.rayleigh(60, cyst.shape) * np.where(cyst, 0.2, 1.0), 0, 255).astype(np.uint8)
    return {
        "dermoscopy-like 600x450 RGB": dermoscopy,
        "x-ray-like 512x512 uint16": xray,
        "ultrasound-like 500x400": ultrasound,
    }


def reference_image() -> np.ndarray:
    """The fixture's 1024² RGB image, or (where ../shared is not at hand, as on a device machine) a synthetic one."""
    path = REFERENCE / "reference_image_seed1234.png"
    if not path.is_file():
        rng = np.random.default_rng(1234)
        rows, cols = np.mgrid[0:1024, 0:1024]
        disc = ((rows - 500) / 300) ** 2 + ((cols - 540) / 260) ** 2 < 1
        gray = np.where(disc, 170.0, 60.0) + rng.normal(0, 12, disc.shape)
        return np.clip(np.stack([gray, gray * 0.9, gray * 0.8], -1), 0, 255).astype(np.uint8)
    try:
        import SimpleITK as sitk
    except ImportError:
        from PIL import Image

        return np.asarray(Image.open(path).convert("RGB"))
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


def load_benchmark_model(checkpoint: str):
    """The checkpoint's model, or with ``random`` the default network with seeded random weights (timings do not
    depend on the weights; the reference weights are random too)."""
    if checkpoint == "random":
        from DeLightSAMLib.build import build_model
        from DeLightSAMLib.config import DEFAULT_CONFIG

        torch.manual_seed(1234)
        return build_model(DEFAULT_CONFIG).eval()
    return load_model(checkpoint)[0]


# ---------------------------------------------------------------------------------------------- measuring
def peak_rss_mb() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def reset_peak_rss() -> None:
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
    except OSError:
        pass


def keep_freed_memory() -> None:
    """Raise glibc's mmap and trim thresholds so freed buffers stay in the heap for the next run."""
    import ctypes

    libc = ctypes.CDLL("libc.so.6")
    m_trim_threshold, m_mmap_threshold = -1, -3
    if not (libc.mallopt(m_mmap_threshold, 1 << 30) and libc.mallopt(m_trim_threshold, (1 << 31) - 1)):
        raise SystemExit("--keep-freed-memory: mallopt refused the thresholds")


def timed(function, repeats: int, warm: bool = True) -> list[float]:
    if warm:
        function()  # warm-up (and, for compiled paths, compilation)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return times


def machine() -> str:
    """The CPU (with its family, model and clock where /proc/cpuinfo says: one cloud "AMD EPYC" can be a Zen 1 with
    half another's float32 FMA width), a measured float32 GEMM rate, torch, threads and any GPU."""
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as info:
            fields = dict(line.split(":", 1) for line in info.read().split("\n\n")[0].splitlines() if ":" in line)
        fields = {key.strip(): value.strip() for key, value in fields.items()}
        model = f"{fields['model name']} (family {fields['cpu family']} model {fields['model']}, {float(fields['cpu MHz']):.0f} MHz)"
    except (OSError, KeyError, ValueError):
        pass
    text = (
        f"{model}, {os.cpu_count()} cores, float32 GEMM {gemm_gflops():.0f} GFLOP/s, torch {torch.__version__} "
        f"({torch.get_num_threads()} threads)"
    )
    if torch.cuda.is_available():
        text += f", GPU {torch.cuda.get_device_name()}"
    return text


def gemm_gflops(size: int = 2048, repeats: int = 5) -> float:
    """Best float32 matrix-product rate of this CPU on torch's threads: what the compute-bound paths scale with."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    best = min(timed(lambda: torch.mm(a, b), repeats))
    return 2 * size**3 / best / 1e9


# ---------------------------------------------------------------------------------------------- benchmark
def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    reference_weights = REFERENCE / "reference_weights_seed1234.pth"
    parser.add_argument(
        "--checkpoint",
        default=str(reference_weights) if reference_weights.is_file() else "random",
        help="a .pth file, or 'random' (default where ../shared/reference is not at hand)",
    )
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--onnx", action="store_true", help="also time the onnxruntime engine (needs onnx, onnxruntime)"
    )
    parser.add_argument("--int8", action="store_true", help="also time dynamic int8 quantisation")
    parser.add_argument("--compile", action="store_true", help="also time torch.compile (minutes on a CPU)")
    parser.add_argument(
        "--keep-freed-memory",
        action="store_true",
        help="glibc only: keep freed memory in the process, so that no path pays for fresh pages "
        "(shows how much of each path's time is page faults; not what users get by default)",
    )
    parser.add_argument("--volume-slices", type=int, default=16)
    parser.add_argument("--batches", default="8,32", help="GPU only: batch sizes for the throughput table")
    parser.add_argument(
        "--load",
        default="",
        help="CPU only: numbers of busy processes to time eager and the default "
        "engine beside, e.g. 0,1,2 (--repeats alternating runs each)",
    )
    parser.add_argument("--load-only", action="store_true", help="with --load: only the load table")
    parser.add_argument("--output", default=str(REPO / "benchmarks" / "results" / "latest"))
    args = parser.parse_args()

    if args.keep_freed_memory:
        keep_freed_memory()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = load_benchmark_model(args.checkpoint).to(device)
    transform = ImageTransform()
    images = {"reference 1024x1024 RGB": reference_image(), **synthetic_images()}
    inputs = {name: transform.prepare(image, device=device) for name, image in images.items()}
    reference_input = inputs["reference 1024x1024 RGB"]

    paths = [("eager", "float32", lambda m: m), ("fused", "float32", lambda m: build_runner(m, "fused"))]
    if device.type == "cpu":
        paths.append(("fast", "float32", lambda m: build_runner(m, "fast")))
    else:
        paths += [
            ("fused", "bfloat16", lambda m: build_runner(m, "fused")),
            ("fused", "float16", lambda m: build_runner(m, "fused")),
        ]
    if args.compile:
        paths.append(
            ("compiled", "bfloat16" if device.type == "cuda" else "float32", lambda m: build_runner(m, "compiled"))
        )
    if args.int8 and device.type == "cpu":
        from torch.ao.quantization import quantize_dynamic

        paths.append(
            (
                "int8-dynamic",
                "int8",
                lambda m: quantize_dynamic(build_runner(m, "fused"), {torch.nn.Linear}, dtype=torch.qint8),
            )
        )
    if args.onnx and device.type == "cpu":
        paths.append(("onnx", "float32", lambda m: build_runner(m, "onnx")))

    def logits_of(runner, net_input, dtype):
        with (
            torch.inference_mode(),
            torch.autocast(device.type, dtype=getattr(torch, dtype), enabled=dtype in ("bfloat16", "float16")),
        ):
            output = runner(net_input)
        return (output if isinstance(output, torch.Tensor) else output.modality_logits).float().cpu()

    loads = [int(count) for count in args.load.split(",") if count.strip()] if device.type == "cpu" else []
    if args.load_only:
        paths = []
    rows, eager_logits = [], {}
    eager = model
    eager_call = lambda: logits_of(eager, reference_input, "float32")  # noqa: E731
    for name, dtype, build in paths:
        runner = build(model)
        reset_peak_rss()
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        # Each timed run of a path is paired with a run of eager right before it, so that the ratio compares
        # the two under the same machine conditions (this shared VM's speed drifts by 20-30% over minutes).
        call = lambda: logits_of(runner, reference_input, dtype)  # noqa: E731
        first_call = timed(call, 1, warm=False)[
            0
        ]  # warm-up (compilation, export); its peak memory is this path's alone
        peak = torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else peak_rss_mb()
        times, eager_times, faults = [], [], 0
        for _ in range(args.repeats):
            eager_times += timed(eager_call, 1, warm=False)
            before = resource.getrusage(resource.RUSAGE_SELF)
            times += timed(call, 1, warm=False)
            after = resource.getrusage(resource.RUSAGE_SELF)
            faults += after.ru_minflt - before.ru_minflt
        largest, agree, total = 0.0, 0, 0
        for image_name, net_input in inputs.items():
            low_res = logits_of(runner, net_input, dtype)
            if name == "eager":
                eager_logits[image_name] = low_res
            size = images[image_name].shape[:2]
            mine = transform.logits_to_image(low_res, size)
            base = transform.logits_to_image(eager_logits[image_name], size)
            largest = max(largest, float((low_res - eager_logits[image_name]).abs().max()))
            agree += int(((torch.sigmoid(mine) >= 0.5) == (torch.sigmoid(base) >= 0.5)).sum())
            total += mine.numel()
        median, eager_median = statistics.median(times), statistics.median(eager_times)
        rows.append(
            {
                "path": name,
                "dtype": dtype,
                "device": device.type,
                "batch": 1,
                "median_s": median,
                "min_s": min(times),
                "max_s": max(times),
                "eager_median_s": eager_median,
                "ratio": median / eager_median,
                "max_logit_diff": largest,
                "mask_agreement": agree / total,
                "peak_memory_mb": peak,
                "page_faults_per_run": faults / args.repeats,
                "first_call_s": first_call,
            }
        )
        print(
            f"{name:>12} {dtype:>8}: {median:.3f} s median (eager alongside {eager_median:.3f} s), ratio "
            f"{median / eager_median:.2f}, |dlogit| {largest:.1e}, masks {100 * agree / total:.4f}%",
            flush=True,
        )
        runner = None  # free it before the next path is built

    throughput = gpu_throughput(model, paths[1:], reference_input, args, logits_of) if device.type == "cuda" else []
    extra = interaction_timings(model, device, images["reference 1024x1024 RGB"], args) if paths else {}
    extra["throughput"] = throughput
    extra["load"] = load_timings(model, reference_input, loads, args.repeats, logits_of) if loads else []
    report = render(rows, extra, machine(), args)
    print(report)
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output + ".md").write_text(report)
    Path(args.output + ".json").write_text(json.dumps({"machine": machine(), "rows": rows, **extra}, indent=2))
    return 0


def gpu_throughput(model, paths, reference_input, args, logits_of) -> list[dict]:
    """Images per second at larger batches (GPU only): the reference input repeated."""
    rows = []
    for name, dtype, build in paths:
        runner = build(model)
        for batch in (int(b) for b in args.batches.split(",")):
            batch_input = reference_input.expand(batch, -1, -1, -1).contiguous()
            times = timed(lambda: logits_of(runner, batch_input, dtype), args.repeats)
            median = statistics.median(times)
            rows.append(
                {
                    "path": name,
                    "dtype": dtype,
                    "batch": batch,
                    "median_s": median,
                    "images_per_s": batch / median,
                    "peak_memory_mb": torch.cuda.max_memory_allocated() / 2**20,
                }
            )
        runner = None
    return rows


def interaction_timings(model, device, image, args) -> dict:
    """What a user waits for: switching modality or threshold on a predicted slice, and a whole volume."""
    predictor = Predictor(model, device=device)
    predictor.set_image(image)
    switch = []
    for modality in range(6):
        start = time.perf_counter()
        predictor.predict(modality)
        switch.append(time.perf_counter() - start)
    threshold = timed(lambda: predictor.predict(0, threshold=0.3), args.repeats)

    rng = np.random.default_rng(1)
    slices = []
    for index in range(args.volume_slices):
        if index % 4 == 0:  # a quarter of the slices are padding, as at the ends of a CT scan
            slices.append(np.full((512, 512), -1024, np.int16))
        else:
            rows, cols = np.mgrid[0:512, 0:512]
            body = ((rows - 256) / 200) ** 2 + ((cols - 256) / 230) ** 2 < 1
            slices.append(np.where(body, rng.normal(40, 30, body.shape), -1000).astype(np.int16))
    window = (40.0, 400.0)
    start = time.perf_counter()
    predictor.predict_batch(slices, "xray", batch_size=4, window=window)
    batched = time.perf_counter() - start
    eager = Predictor(model, device=device, engine="eager")
    start = time.perf_counter()
    for image_slice in slices:
        eager.set_image(image_slice, window)
        eager.predict("xray")
    one_by_one = time.perf_counter() - start
    return {
        "modality_switch_ms": 1000 * statistics.median(switch),
        "threshold_change_ms": 1000 * statistics.median(threshold),
        "volume_slices": len(slices),
        "volume_default_slices_per_s": len(slices) / batched,
        "volume_eager_slices_per_s": len(slices) / one_by_one,
        "default_engine": predictor.engine.name,
    }


def load_timings(model, net_input, loads, repeats, logits_of) -> list[dict]:
    """Eager and the default CPU engine, alternating, beside ``loads[i]`` busy processes each."""
    default = get_engine(AUTO, "cpu")
    runners = {"eager": model, default.name: default.build(model)}
    rows = []
    for busy in loads:
        hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(busy)]
        try:
            time.sleep(1.0)  # the busy processes are running and spread over the CPUs
            for runner in runners.values():
                logits_of(runner, net_input, "float32")  # warm-up beside this load
            times = {name: [] for name in runners}
            cpu = {name: [] for name in runners}
            for _ in range(repeats):
                for name, runner in runners.items():
                    start_cpu = time.process_time()
                    times[name] += timed(lambda: logits_of(runner, net_input, "float32"), 1, warm=False)
                    cpu[name].append(time.process_time() - start_cpu)
        finally:
            for hog in hogs:
                hog.kill()
                hog.wait()
        eager_median, eager_max = statistics.median(times["eager"]), max(times["eager"])
        for name in runners:
            median, largest = statistics.median(times[name]), max(times[name])
            rows.append(
                {
                    "busy": busy,
                    "path": name,
                    "median_s": median,
                    "max_s": largest,
                    "times_s": times[name],
                    "cpu_s": statistics.median(cpu[name]),
                    "median_ratio": median / eager_median,
                    "max_ratio": largest / eager_max,
                }
            )
            print(
                f"{busy} busy: {name:>6} median {median:.2f} s, max {largest:.2f} s ({median / eager_median:.2f} and "
                f"{largest / eager_max:.2f} of eager's), CPU {statistics.median(cpu[name]):.2f} s per run",
                flush=True,
            )
    return rows


def render(rows, extra, machine_text, args) -> str:
    lines = [f"Machine: {machine_text}. Weights: {Path(args.checkpoint).name}."]
    if rows:
        lines += [
            f"{args.repeats} timed runs after one warm-up, one 1024² image per run, each paired with an eager "
            "run just before it (the ratio is of the two medians)."
            + (
                " Run with --keep-freed-memory (glibc keeps freed buffers: no path pays for fresh pages)."
                if args.keep_freed_memory
                else ""
            ),
            "",
            "| path | dtype | device | batch | median s | min s | max s | eager alongside, median s | ratio to eager | max abs logit diff | mask agreement | peak memory MB | page faults per run | first call s |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        ]
    for r in rows:
        lines.append(
            f"| {r['path']} | {r['dtype']} | {r['device']} | {r['batch']} | {r['median_s']:.3f} | {r['min_s']:.3f} | "
            f"{r['max_s']:.3f} | {r['eager_median_s']:.3f} | {r['ratio']:.2f} | {r['max_logit_diff']:.1e} | "
            f"{100 * r['mask_agreement']:.4f}% | {r['peak_memory_mb']:.0f} | {r['page_faults_per_run']:,.0f} | "
            f"{r['first_call_s']:.2f} |"
        )
    if "default_engine" in extra:
        lines += [
            "",
            f"Default engine: {extra['default_engine']}. Changing modality on a predicted 1024² slice: "
            f"{extra['modality_switch_ms']:.1f} ms (median, first time per modality); changing the threshold: "
            f"{extra['threshold_change_ms']:.1f} ms.",
            f"Volume of {extra['volume_slices']} slices of 512² (a quarter blank): {extra['volume_default_slices_per_s']:.2f} "
            f"slices/s batched with the default engine, {extra['volume_eager_slices_per_s']:.2f} slices/s eager one by one.",
            "Mask agreement: thresholded masks at each image's size, all six modalities, reference image and three "
            "synthetic ones, against the eager path. Peak memory: process peak RSS on the CPU, peak allocated on a GPU. "
            "Page faults: minor faults of the process per timed run (each is a fresh 4 KiB page the kernel zeroes; "
            "buffers over the allocator's mmap threshold are returned to the system when freed and faulted in again "
            "on the next run). First call: the warm-up run, with any compilation or export.",
        ]
    if extra["load"]:
        lines += [
            "",
            f"Under load: eager and the default engine alternating, {args.repeats} runs each after one warm-up, "
            'beside busy processes (`python -c "while True: pass"`, started and killed by the benchmark).',
            "",
            "| busy processes | path | median s | max s | runs (s) | CPU s per run, median | median / eager's | max / eager's |",
            "| --- | --- | --- | --- | --- | --- | --- | --- |",
        ]
        for r in extra["load"]:
            lines.append(
                f"| {r['busy']} | {r['path']} | {r['median_s']:.2f} | {r['max_s']:.2f} | "
                f"{', '.join(f'{t:.2f}' for t in r['times_s'])} | {r['cpu_s']:.2f} | {r['median_ratio']:.2f} | "
                f"{r['max_ratio']:.2f} |"
            )
    if extra["throughput"]:
        lines += [
            "",
            "| path | dtype | batch | median s per batch | images/s | peak memory MB |",
            "| --- | --- | --- | --- | --- | --- |",
        ]
        lines += [
            f"| {r['path']} | {r['dtype']} | {r['batch']} | {r['median_s']:.4f} | {r['images_per_s']:.0f} | "
            f"{r['peak_memory_mb']:.0f} |"
            for r in extra["throughput"]
        ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
