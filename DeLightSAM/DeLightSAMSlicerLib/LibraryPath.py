"""Finding ``DeLightSAMLib`` when the module runs from a source checkout.

A built extension installs ``DeLightSAMLib`` beside this package in Slicer's ``qt-scripted-modules`` folder, which
Slicer puts on ``sys.path``. From a source checkout (the module folders given in *Additional module paths*), Slicer
puts only the module folder ``<checkout>/DeLightSAM`` on ``sys.path`` when it loads the module
(``qSlicerScriptedLoadableModuleFactory.cxx``, ``ctkFactoryScriptedItem::load``); the library is one folder up.
``.slicerrc.py`` runs after the modules are created, so it cannot do this in time.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import Optional

LIBRARY = "DeLightSAMLib"


def addSourceCheckoutToPath(moduleFolder: Path) -> Optional[Path]:
    """If ``DeLightSAMLib`` is not importable, append the checkout that holds it (the parent of ``moduleFolder``, the
    folder this package is in) to ``sys.path``.

    Returns the folder added, or None when nothing was needed. Raises ModuleNotFoundError, saying what to do, when
    the library is neither importable nor in the checkout.
    """
    if importlib.util.find_spec(LIBRARY) is not None:
        return None
    checkout = moduleFolder.parent
    if not (checkout / LIBRARY / "__init__.py").is_file():
        raise ModuleNotFoundError(
            f"De-LightSAM cannot find its library {LIBRARY}: it is neither installed nor in {checkout}; "
            "build and install the extension, or add the module folders of a complete source checkout to "
            "Slicer's Additional module paths",
            name=LIBRARY,
        )
    folder = str(checkout)
    if folder not in sys.path:
        sys.path.append(folder)
        importlib.invalidate_caches()
    return checkout
