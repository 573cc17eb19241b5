"""Slicer's translation functions, or pass-through ones where Slicer's i18n is absent (``slicer-core`` in tests, the
background worker process).

Import them as ``from DeLightSAMSlicerLib.i18n import tr as _`` and ``translate``: inside Slicer these are Slicer's
own functions, so each string's translation context is the calling file's, as for any Slicer module. Slicer has
imported ``slicer`` before any module of an extension runs; where nothing has, this module does not import it
either (that would load Slicer's MRML libraries into a process that needs only the network, like the worker).
"""

import sys


def tr(text: str) -> str:
    return text


def translate(context: str, text: str) -> str:
    return text


if "slicer" in sys.modules:
    try:
        from slicer.i18n import tr, translate  # noqa: F811
    except ImportError:  # slicer-core: no application, no translations
        pass


__all__ = ["tr", "translate"]
