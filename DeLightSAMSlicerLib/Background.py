"""Runs and encodings in the background worker, scheduled from the scene's thread without ever waiting on it.

``BackgroundSegmenter`` is what a front end keeps: ``start(run, spec)`` sends a ``MRMLLogic.SegmentationRun`` batch by
batch to the worker (``Worker``) and writes each answer with ``run.write`` on the scene's thread; ``lookAt(key, ...)``
encodes the slice a view shows once it has stayed unchanged for ``dwell`` seconds (``EncodeAhead``), so that Apply on
it costs the decoder and the write only. ``tick(now)`` does everything that is due and returns at once: the Slicer
effect calls it from a ``qt.QTimer``, tests and the web app from their own loops. A newer run supersedes the one under
way: the old one's answer is never written.

Qt-free and torch-free (``Worker`` loads the models in its own process).
"""

from __future__ import annotations

import collections
from dataclasses import dataclass
from typing import Callable, Optional

from DeLightSAMSlicerLib.Worker import PredictorSpec, Ticket, WorkerClient

DWELL_SECONDS = 0.3  # a view unchanged this long is encoded ahead: past a scroll's steps, well before a click


class EncodeAhead:
    """When to encode the shown slice: once it has stayed the same (same ``key``) for the dwell time, and once only.
    Time comes in as ``now`` (any monotonic clock), so tests need no sleeping.

    The dwell is ``dwell`` seconds, or longer while the user scrolls: 1.5 times the typical time between the last few
    changes (those less than ``SCROLL_MEMORY`` s apart), at most ``MAX_DWELL`` s. A slice passed at a steady few per
    second is never sent, and an encoding (seconds of CPU that nothing interrupts) is not spent on it.
    """

    SCROLL_MEMORY = 1.0  # changes a second or more apart are looking, not scrolling
    MAX_DWELL = 1.5

    def __init__(self, dwell: float = DWELL_SECONDS) -> None:
        self.dwell = dwell
        self._key = None
        self._since = 0.0
        self._sent = False
        self._intervals: list[float] = []  # between the last few changes of the view, while scrolling

    def currentDwell(self) -> float:
        if not self._intervals:
            return self.dwell
        typical = sorted(self._intervals)[(len(self._intervals) - 1) // 2]  # the lower median
        return min(max(self.dwell, 1.5 * typical), max(self.dwell, self.MAX_DWELL))

    def due(self, key, now: float) -> bool:
        """True once per shown slice, the dwell time after it appeared; ``key`` None: nothing to encode."""
        if key != self._key:
            interval = now - self._since
            if self._key is not None and interval < self.SCROLL_MEMORY:
                self._intervals = (self._intervals + [interval])[-3:]
            else:
                self._intervals = []
            self._key, self._since, self._sent = key, now, False
            return False
        if key is None or self._sent or now - self._since < self.currentDwell() - 1e-9:
            return False
        self._sent = True
        return True

    def forget(self) -> None:
        """Encode the shown slice again once due (the worker restarted, or its cache was emptied)."""
        self._sent = False


def viewKey(sourceVolumeNode, sliceNode, model: str, checkpoint: str = "") -> Optional[tuple]:
    """What the view image of ``sliceNode`` depends on, cheaply (no voxels read): the volume and its voxels, display
    window and transform (by modification time), the view's plane and size, the model and its checkpoint. None when
    there is nothing to show. A changed key only means "look again": the worker's cache compares the image itself."""
    if sourceVolumeNode is None or sliceNode is None or sourceVolumeNode.GetImageData() is None:
        return None
    display = sourceVolumeNode.GetDisplayNode()
    transform = sourceVolumeNode.GetParentTransformNode()
    sliceToRAS = sliceNode.GetSliceToRAS()
    return (
        sourceVolumeNode.GetID(),
        sourceVolumeNode.GetMTime(),
        sourceVolumeNode.GetImageData().GetMTime(),
        display.GetMTime() if display is not None else 0,
        transform.GetMTime() if transform is not None else 0,
        tuple(sliceToRAS.GetElement(r, c) for r in range(4) for c in range(4)),
        tuple(sliceNode.GetFieldOfView()),
        tuple(sliceNode.GetDimensions()),
        model,
        checkpoint,
    )


@dataclass
class RunOutcome:
    """How a background run ended: its ``SliceResult`` (what was written), or the one error that stopped it (what was
    written before stays)."""

    result: object = None
    error: Optional[Exception] = None
    superseded: bool = False


class BackgroundRun:
    """One ``SegmentationRun`` through the worker. Two batches are in flight, so the worker computes the next while
    the main thread writes the last; each tick does at most one step (read and send a batch, or write one), so the
    main thread is never held longer than one step."""

    IN_FLIGHT = 2

    def __init__(
        self,
        run,
        client: WorkerClient,
        spec: PredictorSpec,
        onFinished: Optional[Callable[[RunOutcome], None]] = None,
        progress: Optional[Callable[[int, int], None]] = None,
    ) -> None:
        self.run = run
        self.client = client
        self.spec = spec
        self.onFinished = onFinished
        self.progress = progress
        self.outcome: Optional[RunOutcome] = None
        self.encodings = 0  # encoder runs its answers needed (0: every view was encoded ahead)
        self._inFlight: collections.deque = collections.deque()  # (batch, ticket), oldest first
        self._allSent = False

    @property
    def finished(self) -> bool:
        return self.outcome is not None

    def tick(self) -> None:
        """One step: write the oldest answer if it came, else send the next batch; finish when all is written
        (scene thread, never blocks)."""
        if self.finished:
            return
        try:
            if self._inFlight and self._inFlight[0][1].done:
                batch, ticket = self._inFlight.popleft()
                if ticket.error is not None:
                    raise ticket.error
                self.encodings += int(ticket.header.get("encodings", 0))
                self.run.write(batch, ticket.arrays)
                if self.progress is not None:
                    self.progress(self.run.done, self.run.total)
            elif not self._allSent and len(self._inFlight) < self.IN_FLIGHT:
                batch = self.run.nextBatch()
                if batch is not None:
                    self._inFlight.append((batch, self.client.predict(self.spec, batch.views, batch.options)))
                self._allSent = batch is None or batch.items[-1] + 1 >= self.run.total
            if self._allSent and not self._inFlight:
                self._finish(RunOutcome())
        except Exception as error:  # the worker's or the writer's: the run ends with it, what was written stays
            self._finish(RunOutcome(error=error))

    def cancel(self, superseded: bool = False) -> None:
        """Stop: the answers in flight are dropped (never written), what was written stays."""
        if self.finished:
            return
        self.run.cancel()
        self._finish(RunOutcome(superseded=superseded))

    def _finish(self, outcome: RunOutcome) -> None:
        for _batch, ticket in self._inFlight:
            ticket.cancel()
        self._inFlight.clear()
        try:
            outcome.result = self.run.finish()
        except Exception as error:
            outcome.error = outcome.error or error
        self.outcome = outcome
        if self.onFinished is not None:
            self.onFinished(outcome)


class BackgroundSegmenter:
    """The worker, the run under way and the encoding ahead of one front end (the Slicer effect, a web session).

    ``spec`` of a model comes from the caller (the session resolves the checkpoint file on the main side). Stop it
    with the scene and with the application (``stop``): the worker process ends.
    """

    def __init__(self, client: Optional[WorkerClient] = None, dwell: float = DWELL_SECONDS) -> None:
        self.client = client or WorkerClient()
        self.encodeAhead = EncodeAhead(dwell)
        self.current: Optional[BackgroundRun] = None
        self.lastError: Optional[str] = None  # the worker's last failure outside a run (encoding ahead), once
        self._encodeTickets: list[Ticket] = []
        self._aheadPaused = False  # the worker failed an encoding ahead: wait for the user's next run

    @property
    def busy(self) -> bool:
        return self.current is not None and not self.current.finished

    def start(self, run, spec: PredictorSpec, onFinished=None, progress=None) -> BackgroundRun:
        """Run ``run`` in the background; a run still under way is superseded (stopped; its answer never written)."""
        if self.busy:
            self.current.cancel(superseded=True)
        self._aheadPaused = False
        self.current = BackgroundRun(run, self.client, spec, onFinished, progress)
        self.current.tick()
        return self.current

    def cancel(self) -> None:
        if self.current is not None:
            self.current.cancel()

    def lookAt(self, key, now: float, readView: Callable[[], object], spec: Optional[PredictorSpec]) -> bool:
        """The view now shows ``key`` (``viewKey``); once it has stayed so for ``dwell`` seconds, read its view
        (``readView()``, a ``SliceView``) and encode it ahead. Not while a run is under way (its batches go first), nor
        without a ``spec`` (the model is not ready to load without asking). True when an encoding was sent."""
        if spec is None or self.busy or self._aheadPaused or not self.encodeAhead.due(key, now):
            return False
        view = readView()
        if view is None:
            return False
        for ticket in self._encodeTickets:
            ticket.cancel()  # superseded: the worker drops it if it has not started
        self._encodeTickets = [self.client.encode(spec, view.image, view.window)]
        return True

    def tick(self) -> None:
        """Everything due now (scene thread, never blocks): answers read, the run advanced. A failed encoding ahead
        (a stopped worker, weights that do not load) is kept for ``takeError`` and pauses encoding ahead until the
        next run, so a worker that cannot start is not started again and again behind the user's back."""
        self.client.poll()
        for ticket in [ticket for ticket in self._encodeTickets if ticket.done]:
            self._encodeTickets.remove(ticket)
            if ticket.error is not None:
                self.lastError = str(ticket.error)
                self._aheadPaused = True
                self.encodeAhead.forget()
        if self.current is not None:
            self.current.tick()

    def takeError(self) -> Optional[str]:
        """The last failure outside a run, once (then None)."""
        error, self.lastError = self.lastError, None
        return error

    def stop(self) -> None:
        """Stop the run under way and the worker (scene closed, application quitting, effect gone)."""
        self.cancel()
        self._encodeTickets = []
        self.client.stop()
