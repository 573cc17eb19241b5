"""De-LightSAM in the browser: a web face over the project's one MRML logic (``DeLightSAMSlicerLib``), built on
Kitware's trame-slicer (Slicer's MRML, slice views and segment editor served to a browser from Python).

Layers: ``DeLightSAMLib`` (the library) <- ``DeLightSAMSlicerLib`` (the Qt-free MRML logic, shared with the Slicer
effect) <- this package (the page, the writer for trame-slicer's segment editor, uploads and downloads). Nothing
here is imported by the library: ``delightsam serve`` imports it on use (its own venv: ``pip install -e '.[web]'``).
"""
