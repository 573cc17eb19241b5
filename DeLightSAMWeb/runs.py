"""Runs of the MRML logic scheduled on the web server's event loop, so that the page never freezes.

A click handler only starts a task (:meth:`RunScheduler.start`) and returns. The task reads the views and writes the
masks on the event-loop thread, the only one that touches MRML and VTK; the network (``predictMasks``) and the first
load of a model run on the model thread (one thread, shared with encoding ahead: ``ahead.py``). Masks go to the slice their view came from (the logic's
``SegmentationRun.write``), whatever is shown when they arrive. All of a run's writes are one undo step.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Callable, Optional

from DeLightSAMLib.errors import DeLightSAMError, first_line
from DeLightSAMSlicerLib.Geometry import SegmentationError
from DeLightSAMSlicerLib.Models import modelTitle
from DeLightSAMSlicerLib.MRMLLogic import SliceResult, predictMasks

from .writer import UndoGroup

logger = logging.getLogger(__name__)


@dataclass
class RunReport:
    """What the status line says after a run."""

    result: Optional[SliceResult] = None
    error: Optional[str] = None
    model: str = ""
    device: str = ""
    note: str = ""  # said after the run's numbers (the DICOM header's modality)
    encodings: Optional[int] = None  # encoder runs of the run (0: its slice was encoded ahead); None: not counted

    def text(self) -> str:
        if self.error:
            return self.error
        result = self.result
        what = "cancelled: " if result.cancelled else ""
        return (
            f"{what}{result.voxelsAdded} voxels added, {result.voxelsRemoved} removed on {result.description} "
            f"({self.model}, {result.seconds:.2f} s, {self.device}{', encoded ahead' if self.encodings == 0 else ''})"
            f"{self.note}"
        )


class RunScheduler:
    """One run at a time: ``start`` checks and starts, ``cancel`` stops after the batch under way.

    ``predictors(model)`` returns a model's predictor (may be slow: it runs off the loop); ``onProgress(done, total)``
    and ``onDone(report)`` are called on the loop.
    """

    def __init__(
        self, predictors: Callable[[str], object], segmentationEditor, device: Callable[[], str], executor=None
    ) -> None:
        self.predictors = predictors
        self.executor = executor  # the thread of every model pass (None: asyncio's default threads)
        self.editor = segmentationEditor
        self.device = device
        self.task: Optional[asyncio.Task] = None
        self.run = None
        self.onProgress: Callable[[int, int], None] = lambda done, total: None
        self.onDone: Callable[[RunReport], None] = lambda report: None

    @property
    def busy(self) -> bool:
        return self.task is not None and not self.task.done()

    def start(self, startRun: Callable[[], object], note: str = "") -> Optional[str]:
        """Start the run ``startRun()`` makes (it checks its inputs); an error message instead, or None. ``note``:
        what the status line adds after the run's numbers."""
        if self.busy:
            return "a run is under way; wait for it or press Cancel"
        try:
            run = startRun()
        except (SegmentationError, DeLightSAMError) as error:
            return first_line(error)
        self.run = run
        self.task = asyncio.ensure_future(self._execute(run, note))
        return None

    def cancel(self) -> bool:
        if not self.busy or self.run is None:
            return False
        self.run.cancel()
        return True

    async def _execute(self, run, note: str = "") -> RunReport:
        report = RunReport(model=modelTitle(run.model), note=note)
        group = UndoGroup(self.editor, "De-LightSAM").open()
        started = time.perf_counter()
        seconds = {"load": 0.0, "read": 0.0, "network": 0.0, "write": 0.0}
        try:
            loop = asyncio.get_running_loop()
            predictor = await loop.run_in_executor(self.executor, self.predictors, run.model)
            encodingsBefore = getattr(predictor, "encodings", None)
            report.device = self.device()
            seconds["load"] = time.perf_counter() - started
            while True:
                mark = time.perf_counter()
                batch = run.nextBatch()
                seconds["read"] += time.perf_counter() - mark
                if batch is None:
                    break
                mark = time.perf_counter()
                masks = await loop.run_in_executor(self.executor, predictMasks, predictor, batch.views, batch.options)
                seconds["network"] += time.perf_counter() - mark
                mark = time.perf_counter()
                run.write(batch, masks)  # back on the loop: the only thread that touches MRML
                seconds["write"] += time.perf_counter() - mark
                self.onProgress(run.done, run.total)
            if encodingsBefore is not None:
                report.encodings = predictor.encodings - encodingsBefore
        except (SegmentationError, DeLightSAMError) as error:
            report.error = first_line(error)
        except Exception as error:  # noqa: BLE001 - one line in the page, the traceback in the server's log
            logger.exception("De-LightSAM run failed")
            report.error = (
                f"unexpected error ({type(error).__name__}: {first_line(error)}); the server's log has the details"
            )
        finally:
            try:
                report.result = run.finish()
            except (SegmentationError, DeLightSAMError) as error:
                report.error = report.error or first_line(error)
            except Exception as error:  # noqa: BLE001
                logger.exception("De-LightSAM run failed to finish")
                report.error = report.error or f"unexpected error ({type(error).__name__}: {first_line(error)})"
            group.close()
            self.run = None
        logger.info(
            "run done in %.2f s (%s; encoder runs: %s): %s",
            time.perf_counter() - started,
            ", ".join(f"{step} {value:.2f} s" for step, value in seconds.items()),
            report.encodings,
            report.error or "ok",
        )
        self.onDone(report)
        return report
