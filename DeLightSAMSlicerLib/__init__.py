"""De-LightSAM's MRML logic, shared by both front ends (the Slicer extension and the web app): geometry, MRML logic
and the session, with no Qt. ``DeLightSAMLib`` is the pure library. Importing the package makes ``DeLightSAMLib``
importable when it runs from a source checkout (see ``LibraryPath``)."""

from pathlib import Path

from .LibraryPath import addSourceCheckoutToPath

addSourceCheckoutToPath(Path(__file__).resolve().parent.parent)
