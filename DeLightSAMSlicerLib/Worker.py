"""The network off Slicer's main thread: a persistent worker process, its wire format and its cache of encodings.

Why a process: Slicer does not enable PythonQt's thread support (no ``setEnableThreadSupport`` in Slicer's source), so
its main thread keeps the GIL while Slicer idles and a Python thread there advances only while Python code runs on
the main thread; Slicer's own long jobs (TotalSegmentator, MONAIAuto3DSeg) run in a separate process for the same
reason. The worker is started on first use with the host's Python (``PythonSlicer`` inside Slicer, as
``slicer.util.launchConsoleProcess`` finds it; ``sys.executable`` elsewhere), loads the checkpoint itself and runs
the MRML logic's ``predictMasks`` on the view images it is sent: the same function the in-process path runs, so
its masks are the same.

Wire format, both ways (no pickles): a 4-byte little-endian length, a JSON header of that length, then the raw bytes
of the arrays the header lists (dtype, shape), in order. The main side never blocks on the worker: ``WorkerClient
.poll`` reads only the bytes already in the pipe (``select`` on POSIX, ``PeekNamedPipe`` on Windows). The worker
reads its stdin on a thread of its own, so a newer request is seen while the network runs: pending encodings are
superseded by newer ones, predictions go first, and a cancelled request is dropped before it starts.

The worker exits when its stdin closes: when Slicer (or the scene, or the effect) stops it, and when its parent dies.

Run as ``python -m DeLightSAMSlicerLib.Worker`` (what ``WorkerClient`` does). Imports no Qt; the worker imports
torch, the client never does.
"""

from __future__ import annotations

import collections
import hashlib
import itertools
import json
import logging
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Callable, Optional, Sequence

import numpy as np

from DeLightSAMLib.errors import DeLightSAMError

logger = logging.getLogger(__name__)

CACHE_SIZE = 4  # encodings kept per model: the last few slices looked at (LiteMedSAM: 4 MB each)
_LENGTH = struct.Struct("<I")


class WorkerError(DeLightSAMError):
    """The worker failed a request (its message says why) or stopped (it restarts on the next request)."""


# ---------------------------------------------------------------------------------------------- wire format
def encodeMessage(header: dict, arrays: Sequence[np.ndarray] = ()) -> list:
    """One message as byte chunks: the header (JSON-able) and arrays (any numeric or bool dtype) as raw bytes."""
    arrays = [np.ascontiguousarray(array) for array in arrays]
    header = dict(header, arrays=[{"dtype": array.dtype.str, "shape": list(array.shape)} for array in arrays])
    text = json.dumps(header).encode("utf-8")
    return [_LENGTH.pack(len(text)) + text] + [memoryview(array).cast("B") for array in arrays if array.size]


def writeMessage(stream: BinaryIO, header: dict, arrays: Sequence[np.ndarray] = ()) -> None:
    for chunk in encodeMessage(header, arrays):
        stream.write(chunk)
    stream.flush()


def _arrayBytes(description: dict) -> int:
    return int(np.prod(description["shape"], dtype=np.int64)) * np.dtype(description["dtype"]).itemsize


def _toArrays(header: dict, payload: memoryview) -> list[np.ndarray]:
    arrays, offset = [], 0
    for description in header["arrays"]:
        size = _arrayBytes(description)
        data = np.frombuffer(payload[offset : offset + size], np.dtype(description["dtype"]))
        arrays.append(data.reshape(description["shape"]).copy())
        offset += size
    return arrays


def readMessage(stream: BinaryIO) -> Optional[tuple[dict, list[np.ndarray]]]:
    """The next message (blocking), or None at the end of the stream."""
    prefix = _readExactly(stream, _LENGTH.size)
    if prefix is None:
        return None
    header = json.loads(_readExactly(stream, _LENGTH.unpack(prefix)[0]) or b"null")
    if header is None:
        return None
    payload = _readExactly(stream, sum(_arrayBytes(description) for description in header["arrays"]))
    if payload is None:
        return None
    return header, _toArrays(header, memoryview(payload))


def _readExactly(stream: BinaryIO, size: int) -> Optional[bytes]:
    chunks, left = [], size
    while left:
        chunk = stream.read(left)
        if not chunk:
            return None
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


class MessageBuffer:
    """Bytes as they arrive, cut into complete messages (the main side's non-blocking reader)."""

    def __init__(self) -> None:
        self._data = bytearray()

    def feed(self, data: bytes) -> list[tuple[dict, list[np.ndarray]]]:
        self._data += data
        messages = []
        while len(self._data) >= _LENGTH.size:
            length = _LENGTH.unpack_from(self._data)[0]
            if len(self._data) < _LENGTH.size + length:
                break
            header = json.loads(bytes(self._data[_LENGTH.size : _LENGTH.size + length]))
            end = _LENGTH.size + length + sum(_arrayBytes(description) for description in header["arrays"])
            if len(self._data) < end:
                break
            messages.append((header, _toArrays(header, memoryview(self._data)[_LENGTH.size + length : end])))
            del self._data[:end]
        return messages


# ---------------------------------------------------------------------------------------------- what to load
@dataclass(frozen=True)
class PredictorSpec:
    """Which predictor a request needs: the model (``Models.AUTOMATIC`` or ``BOX``), its checkpoint file (resolved
    by the session on the main side, so that the worker never asks or downloads) and the device setting. The file's
    size and modification time are part of it: a replaced file is a new checkpoint."""

    model: str
    checkpoint: str
    device: str = "auto"
    fileStamp: tuple = ()

    @classmethod
    def of(cls, model: str, checkpoint, device: str = "auto") -> "PredictorSpec":
        path = Path(checkpoint)
        stat = path.stat()
        return cls(model, str(path), device, (stat.st_size, stat.st_mtime_ns))

    def toJSON(self) -> dict:
        return {"model": self.model, "checkpoint": self.checkpoint, "device": self.device, "fileStamp": self.fileStamp}

    @classmethod
    def fromJSON(cls, values: dict) -> "PredictorSpec":
        return cls(values["model"], values["checkpoint"], values["device"], tuple(values["fileStamp"]))


def optionsToJSON(options) -> dict:
    """The fields of ``MRMLLogic.SegmentationOptions`` (plain values)."""
    import dataclasses

    values = dataclasses.asdict(options)
    values["box"] = None if options.box is None else [float(value) for value in options.box]
    return values


# ---------------------------------------------------------------------------------------------- the cache
# A library predictor keeps its image's encoding in these attributes, all set anew by ``set_image`` (De-LightSAM:
# every modality's logits, LiteMedSAM: the image embedding); saving and restoring them switches images for free.
_IMAGE_STATE = ("_modality_logits", "_patch_logits", "_full_logits", "_embedding", "original_size")


def imageKey(image: np.ndarray, window) -> tuple:
    """What an encoding depends on besides the checkpoint: the values (exactly, as bytes), shape, type and window."""
    image = np.ascontiguousarray(image)
    digest = hashlib.blake2b(memoryview(image).cast("B"), digest_size=16).hexdigest()
    return image.shape, image.dtype.str, None if window is None else tuple(float(v) for v in window), digest


@dataclass
class _Encoding:
    state: dict
    cpuSeconds: float
    used: bool = False


class EncodingCache:
    """A predictor whose ``set_image`` reuses the encoding of any of the last ``size`` images it encoded.

    Keyed by ``imageKey`` (the view's values and display window); the cache belongs to one predictor, so a new
    checkpoint or device starts an empty one. ``lastEncoded`` says whether the last ``set_image`` ran the encoder.
    """

    def __init__(self, predictor, size: int = CACHE_SIZE) -> None:
        self.predictor = predictor
        self.size = size
        self._entries: collections.OrderedDict[tuple, _Encoding] = collections.OrderedDict()
        self.lastEncoded = False
        self.encodings = 0  # encoder runs
        self.unusedSeconds = 0.0  # CPU seconds of encodings dropped from the cache without ever being used

    def encode(self, image: np.ndarray, window) -> bool:
        """Encode ahead (not yet used): True if it ran the encoder, False if the image was encoded already."""
        key = imageKey(image, window)
        if key in self._entries:
            self._entries.move_to_end(key)
            self._restore(self._entries[key])
            return False
        self._encode(key, image, window)
        return True

    def set_image(self, image, window=None) -> None:
        key = imageKey(np.asarray(image), window)
        entry = self._entries.get(key)
        self.lastEncoded = entry is None
        if entry is None:
            entry = self._encode(key, np.asarray(image), window)
        else:
            self._entries.move_to_end(key)
            self._restore(entry)
        entry.used = True

    def predict_batch(self, images, *args, **kwargs):
        """Several images at once (All slices, All frames): encoded in batches by the predictor, not kept (each is
        written once); counted as encoder runs."""
        images = list(images)
        self.encodings += len(images)
        return self.predictor.predict_batch(images, *args, **kwargs)

    def _encode(self, key, image, window) -> _Encoding:
        start = time.process_time()
        self.predictor.set_image(image, window)
        entry = _Encoding(
            {name: getattr(self.predictor, name) for name in _IMAGE_STATE if hasattr(self.predictor, name)},
            time.process_time() - start,
        )
        self.encodings += 1
        self._entries[key] = entry
        while len(self._entries) > self.size:
            _key, dropped = self._entries.popitem(last=False)
            if not dropped.used:
                self.unusedSeconds += dropped.cpuSeconds
        return entry

    def _restore(self, entry: _Encoding) -> None:
        for name, value in entry.state.items():
            setattr(self.predictor, name, value)

    def statistics(self) -> dict:
        """Encoder runs, and the CPU seconds of encodings never used (dropped, or still waiting in the cache)."""
        waiting = sum(entry.cpuSeconds for entry in self._entries.values() if not entry.used)
        return {"encodings": self.encodings, "unusedSeconds": self.unusedSeconds + waiting}

    def __getattr__(self, name):
        return getattr(self.predictor, name)


# ---------------------------------------------------------------------------------------------- the worker process
class _Inbox:
    """Requests read from stdin by a thread; the worker takes them in its order (``take``)."""

    def __init__(self, stream: BinaryIO) -> None:
        self._pending: list[tuple[dict, list]] = []
        self._cancelled: set = set()
        self._closed = False
        self._condition = threading.Condition()
        threading.Thread(target=self._read, args=(stream,), daemon=True).start()

    def _read(self, stream) -> None:
        while True:
            try:
                message = readMessage(stream)
            except (OSError, ValueError):
                message = None
            with self._condition:
                if message is None:
                    self._closed = True
                elif message[0]["type"] == "cancel":
                    self._cancelled.add(message[0]["id"])
                    self._pending = [entry for entry in self._pending if entry[0].get("id") != message[0]["id"]]
                else:
                    self._pending.append(message)
                self._condition.notify()
            if message is None:
                return

    def take(self) -> Optional[tuple[dict, list]]:
        """The next request: the oldest prediction or query first, else the newest encoding (older ones are
        superseded: dropped). None once stdin has closed."""
        with self._condition:
            while not self._pending and not self._closed:
                self._condition.wait()
            if self._closed:
                return None
            for index, entry in enumerate(self._pending):
                if entry[0]["type"] != "encode":
                    return self._pending.pop(index)
            newest = self._pending[-1]
            self._pending.clear()
            return newest


class _WorkerState:
    def __init__(self) -> None:
        self.caches: dict[str, tuple[PredictorSpec, EncodingCache]] = {}  # model -> its predictor, one at a time
        self.unusedSeconds = 0.0  # of caches replaced by another checkpoint
        self.encodings = 0

    def cache(self, spec: PredictorSpec) -> EncodingCache:
        current = self.caches.get(spec.model)
        if current is None or current[0] != spec:
            if current is not None:
                statistics = current[1].statistics()
                self.unusedSeconds += statistics["unusedSeconds"]
                self.encodings += statistics["encodings"]
            self.caches.pop(spec.model, None)  # free the old model before loading the new one
            from DeLightSAMSlicerLib.Models import loadPredictor

            self.caches[spec.model] = (spec, EncodingCache(loadPredictor(spec.checkpoint, spec.model, spec.device)))
        return self.caches[spec.model][1]

    def statistics(self) -> dict:
        values = [cache.statistics() for _spec, cache in self.caches.values()]
        return {
            "encodings": self.encodings + sum(value["encodings"] for value in values),
            "unusedSeconds": self.unusedSeconds + sum(value["unusedSeconds"] for value in values),
        }


def _handle(state: _WorkerState, header: dict, arrays: list) -> tuple[dict, list]:
    kind = header["type"]
    if kind == "stats":
        return dict(state.statistics(), type="stats", id=header.get("id")), []
    spec = PredictorSpec.fromJSON(header["predictor"])
    cache = state.cache(spec)
    start = time.perf_counter()
    if kind == "encode":
        encoded = cache.encode(arrays[0], header["window"])
        return {"type": "encoded", "id": header["id"], "encoded": encoded, "seconds": time.perf_counter() - start}, []
    if kind == "predict":
        from DeLightSAMSlicerLib.Prediction import SegmentationOptions, SliceView, predictMasks

        options = dict(header["options"])
        options["box"] = None if options["box"] is None else tuple(options["box"])
        views = [SliceView(image, tuple(window), None) for image, window in zip(arrays, header["windows"])]
        encodings = cache.encodings
        masks = predictMasks(cache, views, SegmentationOptions(**options))
        reply = {
            "type": "result",
            "id": header["id"],
            "encodings": cache.encodings - encodings,  # 0: every view was encoded already (ahead)
            "seconds": time.perf_counter() - start,
        }
        return reply, [np.asarray(mask, bool) for mask in masks]
    raise ValueError(f"unknown request type {kind!r}")


def serve(requests: BinaryIO, replies: BinaryIO) -> None:
    """The worker's loop: answer requests until ``requests`` closes. Every failure of a request is answered with
    its message (the worker goes on); nothing else is ever written to ``replies``."""
    state = _WorkerState()
    inbox = _Inbox(requests)
    import DeLightSAMSlicerLib.MRMLLogic  # noqa: F401  (slicer's MRML libraries: seconds, paid before the first request)

    while True:
        message = inbox.take()
        if message is None:
            return
        header, arrays = message
        try:
            reply, replyArrays = _handle(state, header, arrays)
        except Exception as error:  # the main side shows the message; the worker serves the next request
            logger.debug("request %s failed", header.get("id"), exc_info=True)
            reply = {"type": "error", "id": header.get("id"), "message": str(error) or type(error).__name__}
            reply["error"] = type(error).__name__
            replyArrays = []
        writeMessage(replies, reply, replyArrays)


def main() -> None:
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    replies = os.fdopen(os.dup(sys.stdout.fileno()), "wb")
    sys.stdout = sys.stderr  # a stray print must never corrupt the replies
    serve(sys.stdin.buffer, replies)


# ---------------------------------------------------------------------------------------------- the main side
def workerCommand() -> list[str]:
    """The command line that starts the worker with this process's Python: ``PythonSlicer`` inside Slicer (Slicer's
    embedded interpreter has no usable ``sys.executable``; Slicer puts PythonSlicer on the PATH), else
    ``sys.executable``."""
    python = sys.executable
    try:
        from slicer import app  # noqa: F401  (only inside the Slicer application)

        python = shutil.which("PythonSlicer") or python
    except ImportError:
        pass
    return [python, "-m", "DeLightSAMSlicerLib.Worker"]


def _workerEnvironment() -> dict:
    """This environment, with the folders holding DeLightSAMSlicerLib and DeLightSAMLib first on the Python path
    (inside Slicer they are in the extension's folder, which PythonSlicer does not search)."""
    import DeLightSAMLib

    folders = [str(Path(__file__).resolve().parents[1]), str(Path(DeLightSAMLib.__file__).resolve().parents[1])]
    environment = dict(os.environ)
    existing = [environment["PYTHONPATH"]] if environment.get("PYTHONPATH") else []
    environment["PYTHONPATH"] = os.pathsep.join(list(dict.fromkeys(folders)) + existing)
    return environment


def _bytesWaiting(fd: int) -> int:
    """Bytes that can be read from the pipe ``fd`` without blocking (1 at end of stream: the read returns b"")."""
    if os.name == "nt":
        import _winapi
        import msvcrt

        try:
            return _winapi.PeekNamedPipe(msvcrt.get_osfhandle(fd), 0)[0] or 0
        except OSError:
            return 1  # broken pipe: the read reports the end
    import select

    readable, _w, _x = select.select([fd], [], [], 0)
    return 1 << 20 if readable else 0


@dataclass(eq=False)
class Ticket:
    """One request in flight. ``done`` once answered; then ``error`` (a WorkerError) or the reply's ``header`` and
    ``arrays`` (a prediction's masks). A cancelled ticket is never answered."""

    id: int
    kind: str
    client: "WorkerClient"
    sentAt: float = field(default_factory=time.perf_counter)
    done: bool = False
    cancelled: bool = False
    header: Optional[dict] = None
    arrays: list = field(default_factory=list)
    error: Optional[WorkerError] = None

    def cancel(self) -> None:
        """Forget this request: the worker drops it if not started, and its answer is thrown away."""
        if not self.done and not self.cancelled:
            self.cancelled = True
            self.client._cancel(self)


class WorkerClient:
    """The main side of the worker: starts it on first request, sends requests, and hands the answers to their
    tickets in ``poll`` (never blocks). A worker that stops fails every ticket in flight with one WorkerError and is
    started again by the next request."""

    def __init__(self, command: Optional[Sequence[str]] = None, clock: Callable[[], float] = time.perf_counter) -> None:
        self.command = list(command) if command else None
        self.clock = clock
        self._process: Optional[subprocess.Popen] = None
        self._log = None
        self._buffer = MessageBuffer()
        self._outbox: collections.deque = collections.deque()  # byte chunks not yet taken by the pipe
        self._tickets: dict[int, Ticket] = {}
        self._ids = itertools.count(1)
        self.starts = 0  # how often a worker was started (a restart after a stop counts)

    # ------------------------------------------------------------------ lifetime
    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    @property
    def pid(self) -> Optional[int]:
        return self._process.pid if self._process is not None else None

    def start(self) -> None:
        if self.running:
            return
        self._discard()
        self._log = tempfile.TemporaryFile()
        self._process = subprocess.Popen(
            self.command or workerCommand(),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log,
            env=_workerEnvironment(),
            bufsize=0,
            creationflags=getattr(subprocess, "CREATE_NO_WINDOW", 0),
        )
        self._buffer = MessageBuffer()
        self._outbox.clear()
        if os.name != "nt" or sys.version_info >= (3, 12):  # Windows pipes can be non-blocking from 3.12 on
            os.set_blocking(self._process.stdin.fileno(), False)
        self.starts += 1

    def stop(self, timeout: float = 2.0) -> None:
        """Stop the worker (closing its stdin ends it; killed if it does not end within ``timeout``). Tickets in
        flight are dropped without an answer."""
        for ticket in self._tickets.values():
            ticket.cancelled = True
        self._tickets.clear()
        process, self._process = self._process, None
        if process is not None:
            try:
                process.stdin.close()
            except OSError:
                pass
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            process.stdout.close()
        self._discard()

    def _discard(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None

    # ------------------------------------------------------------------ requests
    def encode(self, spec: PredictorSpec, image: np.ndarray, window) -> Ticket:
        """Encode a view image ahead; a newer encode supersedes this one if it has not started."""
        return self._send("encode", {"predictor": spec.toJSON(), "window": [float(v) for v in window]}, [image])

    def predict(self, spec: PredictorSpec, views: Sequence, options) -> Ticket:
        """The masks of ``views`` (``MRMLLogic.SliceView``: image and window) with ``options``, as ``predictMasks``
        computes them; the answer's ``arrays`` are the (rows, cols) bool masks."""
        header = {
            "predictor": spec.toJSON(),
            "options": optionsToJSON(options),
            "windows": [[float(v) for v in view.window] for view in views],
        }
        return self._send("predict", header, [np.asarray(view.image) for view in views])

    def statistics(self) -> Ticket:
        """The worker's encoder runs and the CPU seconds of encodings never used."""
        return self._send("stats", {}, [])

    def _send(self, kind: str, header: dict, arrays) -> Ticket:
        self.start()
        ticket = Ticket(next(self._ids), kind, self)
        self._tickets[ticket.id] = ticket
        self._outbox.extend(encodeMessage(dict(header, type=kind, id=ticket.id), arrays))
        self._flush()
        return ticket

    def _cancel(self, ticket: Ticket) -> None:
        self._tickets.pop(ticket.id, None)
        if self._process is not None:
            self._outbox.extend(encodeMessage({"type": "cancel", "id": ticket.id}))
            self._flush()

    def _flush(self) -> None:
        """Hand the pipe what it takes now: the main thread never waits for the worker to read."""
        if self._process is None:
            return
        fd = self._process.stdin.fileno()
        while self._outbox:
            chunk = self._outbox[0]
            try:
                written = os.write(fd, chunk)
            except BlockingIOError:
                return
            except OSError:  # the worker is gone; poll reports it
                self._outbox.clear()
                return
            if written < len(chunk):
                self._outbox[0] = memoryview(chunk)[written:]
                return
            self._outbox.popleft()

    # ------------------------------------------------------------------ answers
    def poll(self) -> list[Ticket]:
        """Read what the worker has answered (without blocking) and return the tickets answered now. Notices a
        stopped worker: its tickets fail with one WorkerError each, all with the same message."""
        if self._process is None:
            return []
        self._flush()
        answered = []
        stdout = self._process.stdout.fileno()
        while _bytesWaiting(stdout):
            try:
                data = os.read(stdout, 1 << 20)
            except OSError:
                data = b""
            if not data:
                return answered + self._stopped()
            for header, arrays in self._buffer.feed(data):
                ticket = self._tickets.pop(header.get("id"), None)
                if ticket is None or ticket.cancelled:
                    continue  # superseded or cancelled: never handed on
                ticket.done, ticket.header, ticket.arrays = True, header, arrays
                if header["type"] == "error":
                    ticket.error = WorkerError(header["message"])
                answered.append(ticket)
        if self._process.poll() is not None:
            answered += self._stopped()
        return answered

    def wait(self, ticket: Ticket, timeout: float = 120.0) -> Ticket:
        """Block until ``ticket`` is answered (scripts, tests, the benchmark; never on Slicer's main thread)."""
        deadline = time.perf_counter() + timeout
        while not ticket.done and not ticket.cancelled:
            if time.perf_counter() > deadline:
                raise TimeoutError(f"no answer from the worker within {timeout} s")
            if self._process is not None and os.name != "nt":
                import select

                writing = [self._process.stdin.fileno()] if self._outbox else []
                select.select([self._process.stdout.fileno()], writing, [], 0.05)
            else:
                time.sleep(0.01)
            self.poll()
        return ticket

    def _stopped(self) -> list[Ticket]:
        """The worker is gone: fail what was in flight with one message, and start afresh next time."""
        from DeLightSAMSlicerLib.i18n import tr as _

        process, self._process = self._process, None
        self._outbox.clear()
        code = process.poll() if process is not None else None
        if process is not None and code is None:
            process.kill()
            code = process.wait()
        if process is not None:  # as stop() does: the pipes are not left to the garbage collector
            for pipe in (process.stdin, process.stdout):
                try:
                    pipe.close()
                except OSError:
                    pass
        message = _(
            "De-LightSAM's background worker stopped ({reason}); nothing was written for this request. It starts "
            "again on the next Apply."
        ).format(reason=self._reason(code))
        failed = []
        for ticket in self._tickets.values():
            ticket.done, ticket.error = True, WorkerError(message)
            failed.append(ticket)
        self._tickets.clear()
        self._discard()
        if failed:
            logger.warning("%s", message)
        return failed

    def _reason(self, code) -> str:
        lastLine = ""
        if self._log is not None:
            self._log.seek(0)
            lines = [line for line in self._log.read().decode("utf-8", "replace").splitlines() if line.strip()]
            lastLine = lines[-1].strip() if lines else ""
        from DeLightSAMSlicerLib.i18n import tr as _

        reason = _("exit code {code}").format(code=code)
        return f"{reason}: {lastLine}" if lastLine else reason


if __name__ == "__main__":
    main()
