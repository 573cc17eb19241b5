"""The web app's encoding ahead without a browser: the effect's BackgroundSegmenter schedule (EncodeAhead's dwell,
once per slice, never while scrolling or while a run is under way) over the in-process client, on a real MRML scene
and slice node; an Apply on the slice encoded ahead runs no encoder."""

from __future__ import annotations

import concurrent.futures
from types import SimpleNamespace

import numpy as np

from conftest import write_volume


class CountingPredictor:
    """Counts encoder runs (``set_image``); its mask is the bright half of the view."""

    is_image_set = True

    def __init__(self) -> None:
        self.encoded = 0

    def set_image(self, image, window=None):
        self.encoded += 1
        self._image = np.asarray(image)

    def predict(self, *_args, **_kwargs):
        return SimpleNamespace(mask=self._image.mean(axis=-1) > 128)


def test_the_shown_slice_is_encoded_once_after_the_dwell_and_apply_then_runs_no_encoder(tmp_path):
    import slicer

    from DeLightSAMLib.imageio import read_image
    from DeLightSAMSlicerLib.Models import AUTOMATIC
    from DeLightSAMSlicerLib.MRMLLogic import DeLightSAMMRMLLogic, SegmentationOptions, predictMasks
    from DeLightSAMSlicerLib.Worker import EncodingCache
    from DeLightSAMWeb import loading
    from DeLightSAMWeb.ahead import EncodingAhead, InProcessClient

    scene = slicer.vtkMRMLScene()
    sliceLogic = slicer.vtkMRMLSliceLogic()
    sliceLogic.SetMRMLScene(scene)
    image = read_image(write_volume(tmp_path / "ct.nrrd"))
    volume = loading.volume_node(scene, image, "ct")
    sliceNode = sliceLogic.AddSliceNode("Red")
    sliceNode.SetOrientation("Axial")
    offsets = [float(loading.ijk_to_ras(image)[2] @ [0, 0, k, 1]) for k in range(5)]
    sliceNode.SetSliceOffset(offsets[2])

    predictor = CountingPredictor()
    cache = EncodingCache(predictor)
    logic = DeLightSAMMRMLLogic(cache)
    thread = concurrent.futures.ThreadPoolExecutor(1)
    running = [False]

    def shown():
        if running[0]:
            return None
        return volume, sliceNode, AUTOMATIC, "weights.pth", lambda: logic.sliceView(volume, sliceNode)

    ahead = EncodingAhead(InProcessClient(lambda model: cache, thread), shown)

    def settle(now):  # the model thread finishes; the next tick reads the answer
        thread.submit(lambda: None).result()
        ahead.tick(now)

    try:
        assert [ahead.tick(t) for t in (0.0, 0.1, 0.2)] == [False, False, False]
        assert ahead.tick(0.31)  # 300 ms unchanged: sent
        settle(0.35)
        assert predictor.encoded == 1
        assert not any(ahead.tick(t) for t in (0.5, 1.0, 2.0))  # once per slice

        # scrolling, a slice every 0.2 s: none is sent; the last one once it has stayed (1.5 x 0.2 s)
        for step, k in enumerate((3, 4, 3, 1)):
            sliceNode.SetSliceOffset(offsets[k])
            assert not ahead.tick(3.0 + 0.2 * step)
            assert not ahead.tick(3.1 + 0.2 * step)
        assert not ahead.tick(3.6 + 0.25)
        assert ahead.tick(3.6 + 0.31)
        settle(4.0)
        assert predictor.encoded == 2

        # a run under way: nothing is encoded ahead, however long the view stays
        running[0] = True
        sliceNode.SetSliceOffset(offsets[0])
        assert not any(ahead.tick(t) for t in (5.0, 5.5, 6.0, 7.0))
        assert predictor.encoded == 2
        running[0] = False

        # Apply on the slice encoded ahead (k = 1 was shown before): no encoder run, the same mask
        sliceNode.SetSliceOffset(offsets[1])
        view = logic.sliceView(volume, sliceNode)
        before = cache.encodings
        masks = predictMasks(cache, [view], SegmentationOptions())
        assert cache.encodings == before and predictor.encoded == 2
        fresh = CountingPredictor()
        np.testing.assert_array_equal(masks[0], predictMasks(fresh, [view], SegmentationOptions())[0])
        assert fresh.encoded == 1
    finally:
        ahead.segmenter.stop()
        thread.shutdown()
        sliceLogic.SetMRMLScene(None)
