"""What De-LightSAM needs from the Slicer it runs in, and how it gets it.

The decisions (oldest Slicer, packages for the running Python, whether PyTorch is usable) are plain functions,
tested under pytest; installing goes through an *installer*: Slicer's (the PyTorch extension and
``slicer.util.pip_install``, in the Slicer face's DeLightSAMQt) inside Slicer, a stand-in in tests. Versions are read
from package metadata; torch is imported only by ``torchImportProblem``, when a model is about to run, and a torch
that fails to import is reported, never raised.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import platform
import re
import sys
from dataclasses import dataclass
from typing import Optional, Protocol, Sequence

from DeLightSAMLib.errors import DeLightSAMError
from DeLightSAMSlicerLib.i18n import tr as _

# Slicer 5.8 ships Python 3.9 (5.10 and later: 3.12). Older Slicers are not built against this extension's APIs
# (translations, effect titles, source-volume naming) and are refused with one message.
MINIMUM_SLICER_VERSION = (5, 8)
MINIMUM_TORCH_VERSION = "2.1"  # the oldest torch the library is tested with (pyproject.toml: torch>=2.1)


def pipRequirements(pythonVersion: Optional[Sequence[int]] = None) -> dict[str, str]:
    """Import name -> pinned pip requirement of each package installed besides torch, for ``pythonVersion``
    (default: the running Python). torch itself comes through the PyTorch extension."""
    version = tuple(pythonVersion if pythonVersion is not None else sys.version_info[:2])
    # gdown downloads the released weights from Google Drive. 6.5.1 is the version tested with and needs Python 3.10;
    # 5.2.0 is the last release that installs on Python 3.9 (Slicer 5.8); the library calls either correctly.
    return {"gdown": "gdown==6.5.1" if version >= (3, 10) else "gdown==5.2.0"}


def versionTuple(text: str) -> tuple[int, ...]:
    """The leading numeric release of a version string: '2.1.0+cu121' -> (2, 1, 0), '2.13.0.dev2025' -> (2, 13, 0)."""
    numbers = []
    for part in str(text).split("."):
        match = re.match(r"\d+", part)
        if match is None:
            break
        numbers.append(int(match.group()))
        if match.end() < len(part):
            break
    return tuple(numbers)


def checkSlicerVersion(slicerVersion: Optional[Sequence[int]]) -> None:
    """Raise DeLightSAMError, saying what to do, when ``slicerVersion`` (major, minor) is older than supported."""
    if slicerVersion is not None and tuple(slicerVersion)[:2] < MINIMUM_SLICER_VERSION:
        raise DeLightSAMError(
            _(
                "De-LightSAM needs 3D Slicer {minimum} or later, this is {version}: install a current Slicer from "
                "https://download.slicer.org"
            ).format(
                minimum=".".join(map(str, MINIMUM_SLICER_VERSION)), version=".".join(map(str, tuple(slicerVersion)[:2]))
            )
        )


def installedVersion(distribution: str) -> Optional[str]:
    """The installed version of a distribution, from its metadata (nothing is imported); None if not installed."""
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


@dataclass(frozen=True)
class TorchState:
    """What torch's metadata says: ``problem`` is None when it is installed and new enough, else one line saying what
    is wrong and what to do; ``missing`` and ``tooOld`` tell the cases apart."""

    version: Optional[str] = None
    problem: Optional[str] = None
    missing: bool = False
    tooOld: bool = False


def torchState() -> TorchState:
    """What the installed torch's metadata says (nothing is imported: loaded torch files can block an uninstall on
    Windows, and a broken torch must not break the panel): missing, too old, or installed. Whether it imports is
    known only when a model is loaded (``torchImportProblem``)."""
    version = installedVersion("torch")
    if version is None and importlib.util.find_spec("torch") is None:
        return TorchState(
            problem=_("PyTorch is not installed; click 'Install dependencies' (asks first)"), missing=True
        )
    if version is not None and versionTuple(version) < versionTuple(MINIMUM_TORCH_VERSION):
        return _tooOld(version)
    return TorchState(version)


def torchImportProblem() -> Optional[str]:
    """Import torch (to run a model, never for a status): None when it imports, else one line saying what failed and
    what to do. Any exception counts (OSError for a missing DLL, ImportError of a part of it, ...)."""
    try:
        importlib.import_module("torch")
    except Exception as error:
        return _(
            "PyTorch {version} is installed but cannot be imported ({error}); click 'Install dependencies' to "
            "reinstall it, then restart Slicer"
        ).format(version=installedVersion("torch") or "", error=_firstLine(error))
    return None


def _tooOld(version: str) -> TorchState:
    return TorchState(
        version,
        _(
            "PyTorch {version} is installed, but De-LightSAM needs {minimum} or later; uninstall it in the PyTorch Utils "
            "module, restart Slicer, then click 'Install dependencies'"
        ).format(version=version, minimum=MINIMUM_TORCH_VERSION),
        tooOld=True,
    )


def platformPins(system: Optional[str] = None, machine: Optional[str] = None) -> dict[str, str]:
    """Distribution -> requirement that torch needs on this platform besides itself (default: the running one).

    On x86-64 macOS (Intel Macs, and Slicer under Rosetta 2) the newest torch is 2.2, built against NumPy 1: with the
    NumPy 2 that Slicer 5.10 (2.0.2) and 5.12 (2.4.6) ship, ``Tensor.numpy()`` fails. SlicerTotalSegmentator pins
    numpy<2 on macOS for the same reason.
    """
    system = sys.platform if system is None else system
    machine = platform.machine() if machine is None else machine
    if system == "darwin" and machine.lower() in ("x86_64", "amd64", "i386"):
        return {"numpy": "numpy<2"}
    return {}


def missingPins(system: Optional[str] = None, machine: Optional[str] = None) -> dict[str, str]:
    """The ``platformPins`` the installed versions break (read from metadata): distribution -> requirement."""
    missing = {}
    for distribution, requirement in platformPins(system, machine).items():
        version = installedVersion(distribution)
        if distribution == "numpy" and version is not None and versionTuple(version) >= (2,):
            missing[distribution] = requirement
    return missing


def missingPackages(pythonVersion: Optional[Sequence[int]] = None) -> dict[str, str]:
    """The packages of ``pipRequirements`` that are not installed: import name -> pip requirement."""
    return {
        name: requirement
        for name, requirement in pipRequirements(pythonVersion).items()
        if importlib.util.find_spec(name) is None
    }


class Installer(Protocol):
    """How packages get installed: inside Slicer, ``DeLightSAMQt.SlicerApp.SlicerInstaller``.

    ``installTorch(requirement, load=False)`` installs without importing torch in this process (a reinstall: the
    files of the broken one may still be loaded; Slicer restarts before torch is used).
    """

    def installTorch(self, requirement: str, load: bool = True) -> None: ...

    def uninstallTorch(self) -> None: ...

    def pipInstall(self, requirement: str) -> None: ...


def _firstLine(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0]}" if lines else type(error).__name__
