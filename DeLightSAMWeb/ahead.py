"""Encoding ahead in the browser: the slice the Red view shows is encoded once it has stayed unchanged ~300 ms, so
that Apply on it costs the decoder and the write only (issue 22).

The scheduling is Slicer's effect's own: ``DeLightSAMSlicerLib.Background.BackgroundSegmenter.lookAt`` (when: the
``EncodeAhead`` dwell, longer while scrolling, once per slice; ``viewKey`` says what the view depends on) and its
``tick``, called here from an asyncio task on the server's event loop instead of Slicer's QTimer. Where the effect
sends the encoding to its worker process, the web server runs it on its own predictors: ``InProcessClient`` has
the ``WorkerClient`` methods the segmenter calls (``encode``, ``poll``, ``stop``) and runs each request on the
single thread that also runs every model pass of the web app (``runs.RunScheduler``), so one predictor is never used
by two threads. The predictors are ``Worker.EncodingCache``: an Apply on a slice encoded ahead finds its encoding.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import time
from dataclasses import dataclass, field
from typing import Callable, Optional

from DeLightSAMSlicerLib.Background import DWELL_SECONDS, BackgroundSegmenter, viewKey

logger = logging.getLogger(__name__)

TICK_SECONDS = 0.05  # how often the event loop looks at the view (the dwell is 0.3 s)


@dataclass(eq=False)
class InProcessTicket:
    """A request on the model thread, with the fields ``BackgroundSegmenter`` reads of a worker's ``Ticket``."""

    kind: str
    future: concurrent.futures.Future
    done: bool = False
    cancelled: bool = False
    error: Optional[Exception] = None
    header: dict = field(default_factory=dict)

    def cancel(self) -> None:
        """Forget it: dropped if it has not started; a started encoding still lands in the cache."""
        if not self.done:
            self.cancelled = True
            self.future.cancel()


class InProcessClient:
    """``WorkerClient``'s interface over this process's predictors: ``predictors(spec)`` is the loaded predictor (an
    ``EncodingCache``) of the model ``spec`` names; requests run on ``executor`` (one thread)."""

    def __init__(self, predictors: Callable[[str], object], executor: concurrent.futures.Executor) -> None:
        self.predictors = predictors
        self.executor = executor
        self._tickets: list[InProcessTicket] = []
        self.encodings = 0  # encodings ahead that ran the encoder (not found in the cache)

    def encode(self, spec, image, window) -> InProcessTicket:
        predictor = self.predictors(spec)
        ticket = InProcessTicket("encode", self.executor.submit(predictor.encode, image, window))
        self._tickets.append(ticket)
        return ticket

    def poll(self) -> list[InProcessTicket]:
        """The requests answered since the last poll (never blocks)."""
        answered = []
        for ticket in [ticket for ticket in self._tickets if ticket.future.done()]:
            self._tickets.remove(ticket)
            ticket.done = True
            if ticket.future.cancelled():
                continue
            ticket.error = ticket.future.exception()
            if ticket.error is None:
                encoded = bool(ticket.future.result())
                ticket.header = {"encoded": encoded}
                self.encodings += int(encoded)
            answered.append(ticket)
        return answered

    def stop(self) -> None:
        for ticket in self._tickets:
            ticket.cancel()
        self._tickets = []


class EncodingAhead:
    """The web app's encoding ahead: ``tick()`` from the event loop looks at the shown view through the shared
    segmenter. ``view()`` gives (volume node, slice node, model, checkpoint, read) of what is shown, or None when
    nothing may be encoded now (no image, a run under way, the model not loaded yet)."""

    def __init__(self, client: InProcessClient, view: Callable[[], Optional[tuple]], dwell: float = DWELL_SECONDS):
        self.client = client
        self.view = view
        self.dwell = dwell
        self.segmenter = BackgroundSegmenter(client, dwell)
        self.sent = 0  # encodings ahead sent (each found in the cache or not: see client.encodings)
        self._task: Optional[asyncio.Task] = None

    def reset(self) -> None:
        """A new image: a fresh schedule (and encoding ahead resumes if a failure had paused it)."""
        self.segmenter.stop()
        self.segmenter = BackgroundSegmenter(self.client, self.dwell)

    def start(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.ensure_future(self._loop())

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(TICK_SECONDS)
            try:
                self.tick(time.monotonic())
            except Exception:  # noqa: BLE001 - encoding ahead is an optimisation: never stop the server over it
                logger.exception("encoding ahead failed")

    def tick(self, now: float) -> bool:
        """Look at the view once (event-loop thread); True when an encoding was sent."""
        self.segmenter.tick()
        error = self.segmenter.takeError()
        if error:
            logger.info("encoding ahead paused until the next image: %s", error)
        shown = self.view()
        if shown is None:
            return False
        volume, sliceNode, model, checkpoint, read = shown
        sent = self.segmenter.lookAt(viewKey(volume, sliceNode, model, checkpoint), now, read, model)
        self.sent += int(sent)
        return sent
