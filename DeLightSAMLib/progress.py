"""The one progress-callback type of the library and the Slicer logic."""

from __future__ import annotations

from typing import Callable, Optional

# progress(done, total): units done so far (bytes, images, slices) and the total, or None while it is unknown.
# Raising from the callback cancels the work (what was finished is kept or discarded as the caller documents).
ProgressCallback = Callable[[int, Optional[int]], None]
