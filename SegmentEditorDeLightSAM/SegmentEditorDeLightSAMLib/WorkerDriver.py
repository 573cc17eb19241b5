"""The effect's runs in the background worker: a ``qt.QTimer`` on Slicer's main thread ticks the Qt-free
``DeLightSAMSlicerLib.Background.BackgroundSegmenter`` (which never blocks), so Slicer keeps painting and answering
while the network runs in the worker process; masks are written on the main thread, in the tick.

While the effect is active, the slice its chosen view shows (in box mode: the slice view under the mouse) is encoded
ahead once it has stayed unchanged for a moment, if the model can be loaded without asking anything. Stand-in
predictors of self-tests (``Session.temporaryPredictor``) run in this process, synchronously, as before.

The worker stops when the scene closes and when Slicer quits (and by itself when Slicer dies: its stdin closes).
"""

import time

import qt

import slicer
from slicer.i18n import tr as _

from DeLightSAMLib.errors import DeLightSAMError
from DeLightSAMSlicerLib.Background import BackgroundSegmenter, viewKey
from DeLightSAMSlicerLib.HeaderModality import resolveModality
from DeLightSAMSlicerLib.Models import AUTOMATIC, BOX
from DeLightSAMSlicerLib.Worker import PredictorSpec

TICK_MS = 20  # how often answers are looked for (a poll costs microseconds): well under a decoder pass


_shared = {}  # the one BackgroundSegmenter (and worker process) of this Slicer session, made on first use


def sharedSegmenter():
    """Every effect instance (clones included) shares one worker: one model in memory, one run at a time."""
    if "segmenter" not in _shared:
        _shared["segmenter"] = BackgroundSegmenter()
        slicer.app.connect("aboutToQuit()", _shared["segmenter"].stop)
    return _shared["segmenter"]


class WorkerDriver:
    """Owned by the effect (``effect.worker``); ``run`` replaces the effect's synchronous ``_run`` for real models."""

    def __init__(self, effect):
        self.effect = effect
        self.hoveredSliceNode = None  # box mode: the view the mouse is over
        self.active = False
        self._specs = {}  # model -> ((checkpoint reference, device), its PredictorSpec or None), for encoding ahead
        self._progress = None
        self._what = None
        self._checkpoint = ""  # of the run under way, for the status line
        self._chosen = None  # Auto: the modality the DICOM header gave, for the status line
        self._run = None  # the BackgroundRun this effect started last (the segmenter is shared by all effects)
        self.closed = False  # the effect is going (cleanup, or its destruction): nothing of it is touched again
        self.timer = qt.QTimer()
        self.timer.setInterval(TICK_MS)
        self.timer.connect("timeout()", self.onTick)

    @property
    def segmenter(self):
        return sharedSegmenter()

    # ------------------------------------------------------------------ lifetime
    def activate(self):
        self.active = True
        self.timer.start()

    def deactivate(self):
        self.active = False
        if not self.segmenter.busy:
            self.timer.stop()

    def close(self):
        """The effect is going (``cleanup()`` from Slicer 5.10 on, its ``destroyed()`` in 5.8): the timer stops and the
        run this effect started is cancelled without its callbacks, so nothing reaches the effect's deleted widgets.
        The shared segmenter and its worker stay for the other effects; a run another effect started is left alone.
        Idempotent."""
        self.active = False
        self.closed = True
        self.timer.stop()
        self._closeProgress()
        run, self._run = self._run, None
        if run is not None and not run.finished:
            run.onFinished = run.progress = None  # its result is never written into this effect
            run.cancel(superseded=True)

    def stop(self):
        """Stop the run under way and the worker (scene closing, Slicer quitting, effect cleanup)."""
        self.timer.stop()
        self._closeProgress()
        self.segmenter.stop()
        self.effect._updateButtons(running=False)

    # ------------------------------------------------------------------ runs
    def run(self, what, start, model=AUTOMATIC):
        """Segment with ``start(options, writer)`` (a ``MRMLLogic`` ``start...`` call) in the worker; ``what`` names the
        items of a batch run (a progress dialog with Cancel), None for one slice. A run under way is superseded."""
        from DeLightSAMQt.Dialogs import DownloadProgressDialog, confirmDialog, userErrorDisplay

        from SegmentEditorDeLightSAMLib.SegmentEditorEffect import EffectWriter, fileForInstance

        owner = self.effect
        standIn = owner.session.standInPredictor(model)
        if standIn is not None:  # a self-test's stand-in: in this process, as before
            owner._run(
                what,
                lambda options, writer, progress: owner.logic.execute(start(options, writer), progress, standIn),
                model,
            )
            return
        with userErrorDisplay(_("De-LightSAM segmentation failed.")):
            options, self._chosen = owner._options(), None
            if model == AUTOMATIC:  # Auto: the header's modality, or a message, before any download
                options, self._chosen = resolveModality(options, owner._sourceVolume(), fileForInstance)
            with DownloadProgressDialog(model) as download:
                checkpoint = owner.session.checkpointFile(confirmDialog, download.report, model)
            spec = PredictorSpec.of(model, checkpoint, owner.session.device)
            self._specs[model] = ((owner.session.checkpointReference(model), owner.session.device), spec)
            self._checkpoint = owner.session.checkpointReference(model)
            segmentationRun = start(options, EffectWriter(owner.scriptedEffect))
            self._closeProgress()
            self._what = what
            self._run = self.segmenter.start(segmentationRun, spec, self._finished, self._report if what else None)
            if what is not None and self.segmenter.busy:
                self._report(0, segmentationRun.total)  # the dialog (and its Stop) from the start
            owner.statusLabel.text = _("De-LightSAM: segmenting in the background...")
            owner._updateButtons(running=what is not None)
            self.timer.start()

    def _report(self, done, total):
        if self._progress is None:
            self._progress = slicer.util.createProgressDialog(
                labelText=_("De-LightSAM: segmenting"), maximum=100, windowTitle=_("De-LightSAM")
            )
            self._progress.setCancelButtonText(_("Stop (keep what is done)"))
            self._progress.connect("canceled()", self._onStop)
        self._progress.setValue(int(100 * done / total) if total else 0)
        self._progress.setLabelText(
            _("De-LightSAM: {done} of {total} {what}").format(done=done, total=total, what=self._what)
        )

    def _finished(self, outcome):
        from DeLightSAMQt.Dialogs import userErrorDisplay

        if self.closed:
            return
        self._closeProgress()
        self.effect._updateButtons(running=False)
        if outcome.superseded:
            return
        if outcome.result is not None:
            self.effect.statusLabel.text = self.effect._statusText(outcome.result, None, self._checkpoint)
            if self._chosen is not None:
                self.effect.statusLabel.text += " " + _("Modality from the DICOM header: {reason}.").format(
                    reason=self._chosen.reason
                )
        if outcome.error is not None:
            with userErrorDisplay(_("De-LightSAM segmentation failed.")):
                raise outcome.error

    def _onStop(self):
        if self._progress is not None:  # the user's Stop (closing the dialog emits canceled() too: see _closeProgress)
            self.segmenter.cancel()

    def _closeProgress(self):
        dialog, self._progress = self._progress, None
        if dialog is not None:
            dialog.close()

    # ------------------------------------------------------------------ the timer
    def onTick(self):
        if self.closed:  # a tick queued before the timer stopped
            self.timer.stop()
            return
        self.segmenter.tick()
        if self.active and not self.segmenter.busy:
            self._encodeAhead()
        error = self.segmenter.takeError()
        if error:
            self.effect.statusLabel.text = error
        if not self.active and not self.segmenter.busy:
            self.timer.stop()

    def _encodeAhead(self):
        owner = self.effect
        model = BOX if owner._boxMode() else AUTOMATIC
        spec = self._aheadSpec(model)
        volume = owner._sourceVolume()
        sliceNode = (self.hoveredSliceNode if model == BOX else None) or owner._sliceNode()
        key = viewKey(volume, sliceNode, model, spec.checkpoint if spec else "")

        def readView():
            try:
                return owner.logic.sliceView(volume, sliceNode)
            except Exception:  # nothing to encode (no volume, a 4D one): Apply will say why
                return None

        self.segmenter.lookAt(key, time.monotonic(), readView, spec)

    def _aheadSpec(self, model):
        """The spec of ``model``'s chosen checkpoint when it loads without asking, else None (no encoding ahead until
        Apply has prepared it). Looked up again only when the checkpoint or device setting changes."""
        session = self.effect.session
        try:
            wanted = (session.checkpointReference(model), session.device)
        except DeLightSAMError:
            return None
        known = self._specs.get(model)
        if known is None or known[0] != wanted:
            checkpoint = session.readyCheckpointFile(model)
            spec = PredictorSpec.of(model, checkpoint, session.device) if checkpoint is not None else None
            known = self._specs[model] = (wanted, spec)
        return known[1]
