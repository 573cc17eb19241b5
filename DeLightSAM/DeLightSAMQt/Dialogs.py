"""The dialogs both Slicer panels (the De-LightSAM module and the Segment Editor effect) open: a question, a progress
dialog that can cancel, and the error display that ends a failed action in one message."""

import contextlib
import logging
import traceback

import slicer
from slicer.i18n import tr as _

from DeLightSAMSlicerLib.Models import modelTitle


def confirmDialog(text):
    """The session's ``confirm`` callback: an OK/Cancel question."""
    return slicer.util.confirmOkCancelDisplay(text, _("De-LightSAM"))


class ProgressDialog:
    """A modal progress dialog with a cancel button, shown from the first ``update`` on (a run that reports nothing
    shows nothing) and closed when the block ends, also when it fails.

    ``update(done, total, text)`` shows progress and raises ``cancelled()`` once the user has cancelled.
    """

    def __init__(self, cancelled, cancelText=None):
        self.cancelled = cancelled
        self.cancelText = cancelText
        self.dialog = None

    def __enter__(self):
        return self

    def update(self, done, total, text):
        if self.dialog is None:
            self.dialog = slicer.util.createProgressDialog(labelText=text, maximum=100, windowTitle=_("De-LightSAM"))
            if self.cancelText:
                self.dialog.setCancelButtonText(self.cancelText)
        self.dialog.setValue(int(100 * done / total) if total else 0)
        self.dialog.setLabelText(text)
        slicer.app.processEvents()
        if self.dialog.wasCanceled:
            raise self.cancelled()

    def __exit__(self, *exc):
        if self.dialog is not None:
            self.dialog.close()
            self.dialog = None


class DownloadProgressDialog(ProgressDialog):
    """The progress of downloading ``model``'s weights (``Models.AUTOMATIC`` or ``Models.BOX``: no default, so that a
    dialog never names the other model)."""

    def __init__(self, model):
        from DeLightSAMLib.errors import DownloadCancelled

        super().__init__(lambda: DownloadCancelled(_("download cancelled; nothing was saved")))
        self.model = model

    def report(self, done, total):
        self.update(
            done,
            total,
            _("Downloading the {model} weights: {megabytes} MB").format(
                model=modelTitle(self.model), megabytes=f"{done / 1e6:.1f}"
            ),
        )


@contextlib.contextmanager
def userErrorDisplay(message):
    """Like slicer.util.tryWithErrorDisplay, but a user's mistake (DeLightSAMError) shows as a plain message
    without details; anything else shows with its traceback. The exception does not propagate, except in testing
    mode (``slicer.app.testingEnabled()``), where Slicer shows no message box: there it fails the self-test.

    Override cursors are not touched here: each one this code sets is a ``slicer.util.WaitCursor`` block inside,
    which restores its own cursor when the error passes through it; a caller's cursor stays."""
    try:
        yield
    except Exception as error:
        from DeLightSAMLib.errors import DeLightSAMError

        if slicer.app.testingEnabled():
            raise
        if isinstance(error, DeLightSAMError):
            slicer.util.errorDisplay(f"{message}\n\n{error}")
        else:
            logging.exception(message)
            slicer.util.errorDisplay(f"{message}\n\n{error}", detailedText=traceback.format_exc())
