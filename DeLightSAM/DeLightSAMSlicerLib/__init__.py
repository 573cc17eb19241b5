"""De-LightSAM's Slicer-side code: geometry, MRML logic and the session (module-private; ``DeLightSAMLib`` is the
pure library). Importing the package makes ``DeLightSAMLib`` importable when Slicer runs the module from a source
checkout (see ``LibraryPath``)."""

from pathlib import Path

from .LibraryPath import addSourceCheckoutToPath

addSourceCheckoutToPath(Path(__file__).resolve().parent.parent)
