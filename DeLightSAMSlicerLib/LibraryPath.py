"""Finding ``DeLightSAMLib`` when this package runs from a source checkout.

A built extension installs ``DeLightSAMLib`` beside this package in Slicer's ``qt-scripted-modules`` folder, which
Slicer puts on ``sys.path``. From a source checkout (the module folders given in *Additional module paths*), Slicer
puts only the module folder ``<checkout>/DeLightSAM`` on ``sys.path`` when it loads the module
(``qSlicerScriptedLoadableModuleFactory.cxx``, ``ctkFactoryScriptedItem::load``); ``DeLightSAM.py`` then adds the
checkout, where this package and the library sit side by side. ``.slicerrc.py`` runs after the modules are created,
so it cannot do this in time. Outside Slicer (the web app, tests) the checkout or an installed copy is on the path.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import Optional

LIBRARY = "DeLightSAMLib"


def addSourceCheckoutToPath(checkout: Path) -> Optional[Path]:
    """If ``DeLightSAMLib`` is not importable, append ``checkout`` (the folder this package is in, where the library
    sits beside it in a source checkout) to ``sys.path``.

    Returns the folder added, or None when nothing was needed. Raises ModuleNotFoundError, saying what to do, when
    the library is neither importable nor in the checkout.
    """
    if importlib.util.find_spec(LIBRARY) is not None:
        return None
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
