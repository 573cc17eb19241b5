"""Slicer's translation functions, or pass-through ones where Slicer's i18n is absent (``slicer-core`` in tests).

Import them as ``from DeLightSAMSlicerLib.i18n import tr as _`` and ``translate``: inside Slicer these are Slicer's
own functions, so each string's translation context is the calling file's, as for any Slicer module.
"""

try:
    from slicer.i18n import tr, translate
except ImportError:  # slicer-core: no application, no translations

    def tr(text: str) -> str:
        return text

    def translate(context: str, text: str) -> str:
        return text


__all__ = ["tr", "translate"]
