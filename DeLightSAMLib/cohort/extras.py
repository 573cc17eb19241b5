"""The ``cohort`` extra's packages, imported only when a case needs them, with one clear line when missing."""

from __future__ import annotations

import importlib
from types import ModuleType

from ..errors import DeLightSAMError

INSTALL_HINT = "pip install 'DeLightSAMLib[cohort]'"
# import name -> pip name
PACKAGES = {
    "pydicom": "pydicom",
    "highdicom": "highdicom",
    "slicerio": "slicerio",
    "dicomweb_client": "dicomweb-client",
}


class MissingPackageError(DeLightSAMError):
    """An optional package that a requested output or input needs is not installed."""


def require(module: str, purpose: str) -> ModuleType:
    """Import ``module`` (one of PACKAGES) or raise MissingPackageError saying what needs it and how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise MissingPackageError(
            f"{purpose} needs the Python package '{PACKAGES.get(module, module)}', which is not installed "
            f"({error}); install it with: {INSTALL_HINT}"
        ) from error
