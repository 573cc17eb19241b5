"""The background worker (``Worker``, ``Background``) with real processes, real weights and real MRML scenes: its masks
equal the in-process path voxel for voxel; a slice encoded ahead is segmented without encoding it again, whatever
the modality; a changed display window or checkpoint encodes again; a superseded run is never written; a killed
worker fails its run with one message and the next run works; the worker ends when its stdin closes."""

from __future__ import annotations

import os
import shutil
import signal
import time

import numpy as np
import pytest

from DeLightSAMSlicerLib.Background import BackgroundSegmenter, EncodeAhead, viewKey
from DeLightSAMSlicerLib.MRMLLogic import DeLightSAMMRMLLogic, SliceView
from DeLightSAMSlicerLib.Worker import (
    EncodingCache,
    MessageBuffer,
    PredictorSpec,
    WorkerClient,
    WorkerError,
    encodeMessage,
)

SHAPE = (3, 40, 48)  # [k, j, i]
IJK_TO_RAS = np.array([[-0.8, 0, 0, 4], [0, -0.8, 0, 2], [0, 0, 2.0, -3], [0, 0, 0, 1.0]])
TIMEOUT = 300  # seconds: a busy 2-core machine, the first request starts torch and loads the weights


# ---------------------------------------------------------------------------------------------- no process
def test_messages_survive_any_cutting_of_the_byte_stream():
    arrays = [
        np.arange(12, dtype=np.float32).reshape(3, 4) - 5.5,
        np.array([[True, False], [False, True]]),
        np.zeros((0, 3), np.int64),
        np.full((2, 2, 3), 200, np.uint8),
    ]
    stream = b"".join(bytes(chunk) for chunk in encodeMessage({"type": "predict", "id": 7}, arrays))
    stream += b"".join(bytes(chunk) for chunk in encodeMessage({"type": "stats", "id": 8}))
    buffer, messages = MessageBuffer(), []
    for start in range(0, len(stream), 5):  # five bytes at a time, as a pipe may hand them over
        messages += buffer.feed(stream[start : start + 5])
    assert [header["id"] for header, _arrays in messages] == [7, 8]
    received = messages[0][1]
    assert [array.dtype for array in received] == [array.dtype for array in arrays]
    assert all(np.array_equal(got, sent) for got, sent in zip(received, arrays))
    assert messages[1][1] == []


def test_encode_ahead_is_due_once_after_the_view_stayed_unchanged():
    schedule = EncodeAhead(dwell=0.3)
    assert not schedule.due("slice 1", 10.0)
    assert not schedule.due("slice 1", 10.29)
    assert schedule.due("slice 1", 10.3)
    assert not schedule.due("slice 1", 11.0)  # once
    assert not schedule.due("slice 2", 11.1)  # scrolled: the clock starts again
    assert not schedule.due("slice 3", 11.3)
    assert schedule.due("slice 3", 11.65)
    schedule.forget()  # the worker restarted: encode the shown slice again
    assert schedule.due("slice 3", 11.7)
    assert not schedule.due(None, 12.0) and not schedule.due(None, 13.0)  # nothing shown


def test_encode_ahead_sends_no_slice_passed_while_scrolling_at_a_few_per_second():
    schedule = EncodeAhead(dwell=0.3)
    assert not schedule.due(0, 49.0) and schedule.due(0, 49.5)  # looked at slice 0, then scrolls
    now, sent = 50.0, []
    for slice in range(1, 20):  # three slices a second: each stays 0.33 s, longer than the dwell alone
        for step in range(4):
            if schedule.due(slice, now + step * 0.11):
                sent.append(slice)
        now += 1 / 3
    assert sent == [1]  # the first slice of the scroll: nothing yet says it is one (one wasted encoding)
    appeared = now - 1 / 3  # the last slice: the user stopped there
    assert not schedule.due(19, appeared + 0.45)  # the dwell has grown to 1.5 x 0.33 s
    assert schedule.due(19, appeared + 0.5)
    assert schedule.currentDwell() == pytest.approx(0.5)
    later = now + 5.0  # long after: the next slice waits the plain dwell again
    assert not schedule.due(20, later) and schedule.due(20, later + 0.3)


class CountingPredictor:
    """Encodes by remembering the image's mean; counts encoder runs."""

    def __init__(self) -> None:
        self.encodings = 0

    def set_image(self, image, window=None):
        self.encodings += 1
        self._embedding = float(np.mean(image)) + (window[0] if window else 0)
        self.original_size = np.shape(image)[:2]


def test_cache_keeps_the_last_few_encodings_and_counts_those_never_used():
    predictor = CountingPredictor()
    cache = EncodingCache(predictor, size=2)
    images = [np.full((4, 4), value, np.float32) for value in (1, 2, 3)]
    assert cache.encode(images[0], (0, 1)) and cache.encode(images[1], (0, 1))
    cache.set_image(images[0], (0, 1))  # encoded ahead: used, not encoded again
    assert (predictor.encodings, cache.lastEncoded, predictor._embedding) == (2, False, 1.0)
    cache.set_image(images[0], (5, 1))  # another window: another encoding
    assert (predictor.encodings, cache.lastEncoded, predictor._embedding) == (3, True, 6.0)
    assert cache.encode(images[2], (0, 1))  # the cache holds two: the oldest goes
    assert len(cache._entries) == 2
    cache.set_image(images[1], (0, 1))
    assert cache.lastEncoded  # image 1 was dropped unused, so encoded again
    assert cache.statistics()["encodings"] == 5


# ---------------------------------------------------------------------------------------------- real processes
@pytest.fixture(scope="module")
def client():
    client = WorkerClient()
    yield client
    client.stop()


@pytest.fixture()
def scene(mrml):
    rng = np.random.default_rng(5)
    voxels = (rng.random(SHAPE) * 400).astype(np.int16)
    voxels[:, 10:30, 12:36] += 600
    volume = mrml.volume(voxels, IJK_TO_RAS)
    volume.GetDisplayNode().SetAutoWindowLevel(False)
    volume.GetDisplayNode().SetWindowLevel(800, 400)
    segmentation, (target, other) = mrml.segmentation(volume)
    sliceNode = mrml.sliceNode("Red", "Axial")
    return dict(volume=volume, segmentation=segmentation, target=target, other=other, sliceNode=sliceNode, mrml=mrml)


def _showSlice(scene, k):
    scene["sliceNode"].JumpSliceByCentering(*(IJK_TO_RAS @ np.array([20, 20, k, 1.0]))[:3])


def _segment(scene, segment="target"):
    return scene["mrml"].segmentArray(scene["segmentation"], scene[segment], scene["volume"])


def _targets(scene, segment="target"):
    return scene["volume"], scene["sliceNode"], scene["segmentation"], scene[segment]


def _finish(segmenter, run):
    deadline = time.monotonic() + TIMEOUT
    while not run.finished:
        assert time.monotonic() < deadline, "the background run did not finish"
        segmenter.tick()
        time.sleep(0.01)
    return run.outcome


@pytest.fixture()
def spec(reference_weights_path):
    return PredictorSpec.of("automatic", reference_weights_path, "cpu")


def test_worker_masks_equal_the_in_process_path_voxel_for_voxel(scene, client, spec, reference_predictor):
    logic = DeLightSAMMRMLLogic(reference_predictor)
    segmenter = BackgroundSegmenter(client)
    mrml, empty = scene["mrml"], np.zeros(SHAPE)

    def inProcess(start):
        mrml.setSegment(scene["segmentation"], scene["target"], empty, scene["volume"])
        logic.execute(start())  # the synchronous path: the network in this process
        return _segment(scene)

    _showSlice(scene, 1)
    outcome = _finish(segmenter, segmenter.start(logic.startSlice(*_targets(scene), "dermoscopy"), spec))
    assert outcome.error is None and outcome.result.sliceCount == 1
    inWorker = _segment(scene)
    assert inWorker[1].any() and not inWorker[[0, 2]].any()
    assert np.array_equal(inWorker, inProcess(lambda: logic.startSlice(*_targets(scene), "dermoscopy")))

    # All slices: batches of views (predict_batch), each written where its views came from
    logic.batchSize = 2
    mrml.setSegment(scene["segmentation"], scene["target"], empty, scene["volume"])
    progress = []
    run = segmenter.start(
        logic.startAllSlices(*_targets(scene), "xray"), spec, progress=lambda *done: progress.append(done)
    )
    outcome = _finish(segmenter, run)
    assert outcome.error is None and progress == [(2, 3), (3, 3)]
    assert run.encodings == 3  # batches are encoded together, never from the cache
    inWorker = _segment(scene)
    assert all(inWorker[k].any() for k in range(SHAPE[0]))
    assert np.array_equal(inWorker, inProcess(lambda: logic.startAllSlices(*_targets(scene), "xray")))


def test_a_slice_encoded_ahead_costs_no_encoding_until_its_window_or_checkpoint_changes(
    scene, client, spec, reference_predictor, tmp_path
):
    logic = DeLightSAMMRMLLogic(reference_predictor)
    segmenter = BackgroundSegmenter(client, dwell=0.3)
    volume, sliceNode = scene["volume"], scene["sliceNode"]

    def lookAt(now, currentSpec):
        key = viewKey(volume, sliceNode, currentSpec.model, currentSpec.checkpoint)
        return segmenter.lookAt(key, now, lambda: logic.sliceView(volume, sliceNode), currentSpec)

    def apply(modality, currentSpec, **changes):
        run = segmenter.start(logic.startSlice(*_targets(scene), modality, **changes), currentSpec)
        outcome = _finish(segmenter, run)
        assert outcome.error is None
        return run.encodings

    _showSlice(scene, 0)
    assert not lookAt(100.0, spec)
    _showSlice(scene, 2)  # scrolled on before the dwell: slice 0 is never sent
    assert not lookAt(100.2, spec) and not lookAt(100.45, spec)
    assert lookAt(100.55, spec)  # slice 2 stayed 0.3 s
    assert not lookAt(100.9, spec)  # sent once
    assert apply("dermoscopy", spec) == 0  # encoded ahead: predict and write only
    assert apply("fundus", spec, threshold=0.3, replace=True) == 0  # another modality and threshold: still free
    assert _segment(scene)[2].any()

    scene["volume"].GetDisplayNode().SetWindowLevel(500, 300)  # another display window: another image
    assert apply("fundus", spec) == 1
    assert apply("xray", spec) == 0

    copy = tmp_path / "other_checkpoint.pth"  # the same weights in another file: another checkpoint
    shutil.copyfile(spec.checkpoint, copy)
    assert apply("xray", PredictorSpec.of("automatic", copy, "cpu")) == 1


def test_a_superseded_run_is_never_written(scene, client, spec, reference_predictor):
    logic = DeLightSAMMRMLLogic(reference_predictor)
    segmenter = BackgroundSegmenter(client)
    _showSlice(scene, 0)
    first = segmenter.start(logic.startSlice(*_targets(scene), "dermoscopy"), spec)
    _showSlice(scene, 2)
    second = segmenter.start(logic.startSlice(*_targets(scene), "dermoscopy"), spec)
    assert first.finished and first.outcome.superseded and first.outcome.result.sliceCount == 0
    outcome = _finish(segmenter, second)
    assert outcome.error is None
    for _ in range(20):  # whatever the worker still answers for the first run arrives before the second's
        segmenter.tick()
    written = _segment(scene)
    assert written[2].any() and not written[0].any() and not written[1].any()


def test_a_killed_worker_fails_its_run_with_one_message_and_the_next_run_works(scene, spec, reference_predictor):
    logic = DeLightSAMMRMLLogic(reference_predictor)
    segmenter = BackgroundSegmenter(WorkerClient())
    try:
        _showSlice(scene, 1)
        run = segmenter.start(logic.startSlice(*_targets(scene), "dermoscopy"), spec)
        os.kill(segmenter.client.pid, signal.SIGKILL)
        outcome = _finish(segmenter, run)
        assert isinstance(outcome.error, WorkerError)
        message = str(outcome.error)
        assert "background worker stopped" in message and "next Apply" in message and "\n" not in message
        assert not _segment(scene).any()  # nothing half-written
        assert outcome.result.sliceCount == 0

        outcome = _finish(segmenter, segmenter.start(logic.startSlice(*_targets(scene), "dermoscopy"), spec))
        assert outcome.error is None and segmenter.client.starts == 2
        assert _segment(scene)[1].any()
    finally:
        segmenter.stop()


def test_worker_errors_are_one_message_and_the_worker_goes_on(scene, client, spec, reference_predictor, tmp_path):
    notWeights = tmp_path / "notes.pth"
    notWeights.write_bytes(b"not a checkpoint")
    view = SliceView(np.zeros((8, 8), np.float32), (0.5, 1.0), None)
    failed = client.wait(client.encode(PredictorSpec.of("automatic", notWeights, "cpu"), view.image, view.window))
    assert isinstance(failed.error, WorkerError) and str(notWeights) in str(failed.error)
    assert client.wait(client.encode(spec, view.image, view.window)).error is None


def test_the_worker_ends_when_its_stdin_closes(spec):
    client = WorkerClient()
    client.start()
    process = client._process
    client.stop(timeout=60)  # closes stdin: the worker returns from its loop (killed only after the timeout)
    assert process.returncode == 0
    assert not client.running


def test_a_killed_worker_s_pipes_are_closed_and_the_next_request_starts_another():
    client = WorkerClient()
    try:
        client.start()
        process = client._process
        os.kill(process.pid, signal.SIGKILL)
        process.wait(TIMEOUT)
        assert client.poll() == [] and not client.running  # noticed: nothing was in flight
        assert process.stdin.closed and process.stdout.closed  # not left to the garbage collector (ResourceWarning)
        answer = client.wait(client.statistics(), TIMEOUT)
        assert answer.error is None and client.starts == 2 and client._process is not process
    finally:
        client.stop()


# ---------------------------------------------------------------------------------------------- the session's part
class NoInstaller:
    def __getattr__(self, name):
        raise AssertionError(f"nothing is installed here ({name})")


def _session(path="", **settings):
    from DeLightSAMSlicerLib.Session import LOCAL_FILE, DeLightSAMSession, DictSettings

    session = DeLightSAMSession(DictSettings(), NoInstaller(), (5, 10))
    session.setCheckpoint(LOCAL_FILE, str(path))
    session.setDevice("cpu")
    return session


def test_the_worker_gets_the_checkpoint_file_and_nothing_is_loaded_here(reference_weights_path, monkeypatch):
    from DeLightSAMSlicerLib import Requirements, Session

    session = _session(reference_weights_path)
    asked = []
    assert session.checkpointFile(asked.append) == reference_weights_path
    assert session.readyCheckpointFile() == reference_weights_path
    assert session._loadedPredictor("automatic") is None and asked == []  # nothing loaded in this process
    assert _session("").readyCheckpointFile() is None  # no file chosen: encode nothing ahead, ask nothing
    monkeypatch.setattr(Session, "installedVersion", lambda name: None)  # torch not installed (metadata)
    assert session.readyCheckpointFile() is None
    assert Requirements.installedVersion("numpy") is not None


def test_the_main_side_of_the_worker_imports_no_torch():
    import subprocess
    import sys
    from pathlib import Path

    code = (
        "import sys; sys.path.insert(0, sys.argv[1]); "
        "import DeLightSAMSlicerLib.Background, DeLightSAMSlicerLib.Worker; print('torch' in sys.modules)"
    )
    repo = Path(__file__).resolve().parents[2]
    run = subprocess.run([sys.executable, "-c", code, str(repo)], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "False"


def test_the_worker_s_side_loads_no_slicer_library():
    """The worker process runs predictMasks on the options and views it is sent: Prediction imports neither slicer
    nor vtk, so the worker starts without loading Slicer's MRML libraries."""
    import subprocess
    import sys
    from pathlib import Path

    code = (
        "import sys; sys.path.insert(0, sys.argv[1]); "
        "import DeLightSAMSlicerLib.Worker, DeLightSAMSlicerLib.Prediction as p; "
        "p.SegmentationOptions(modality='xray').model; "
        "print(sorted(name for name in ('slicer', 'vtk', 'vtkmodules') if name in sys.modules))"
    )
    repo = Path(__file__).resolve().parents[2]
    run = subprocess.run([sys.executable, "-c", code, str(repo)], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "[]"
