"""Exceptions for failures a user can act on. Their messages say what, where and what to do."""


class DeLightSAMError(Exception):
    """Base class: front ends (CLI, Slicer) show ``str(error)`` as one line and no traceback."""


class UnknownNameError(DeLightSAMError, ValueError):
    """An unknown modality or checkpoint name."""


class CheckpointError(DeLightSAMError):
    """A checkpoint that is missing, unreadable, corrupt or does not fit the model."""


class DownloadError(DeLightSAMError):
    """A download that failed or was cancelled; nothing was left in the cache."""


class DownloadCancelled(DownloadError):
    """A download the user cancelled (raised by a progress callback): no further source is tried."""


class ImageError(DeLightSAMError, ValueError):
    """An image that cannot be read or has a shape or type the model cannot take."""


class BoxError(DeLightSAMError, ValueError):
    """A box prompt that is empty, inverted, not finite or outside the image."""


class EngineError(DeLightSAMError, ValueError):
    """An inference engine that cannot run the given network, or is missing a package it needs."""


class ArgumentError(DeLightSAMError, ValueError):
    """A value given to the library that is of the wrong type or out of range (a threshold, a batch size)."""


class HeaderModalityError(DeLightSAMError, ValueError):
    """An image whose header cannot choose the modality: no DICOM header, or one naming none the model knows."""


def first_line(error: BaseException) -> str:
    """The line of an exception's message that says what went wrong, for a one-line report: its first line, except
    for SimpleITK's, whose first line says where in SimpleITK's C++ code it was thrown and whose ``sitk::ERROR:``
    line says what happened; the exception's type name when the message is empty."""
    lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
    if not lines:
        return type(error).__name__
    return next((line for line in lines if line.startswith("sitk::ERROR")), lines[0])
