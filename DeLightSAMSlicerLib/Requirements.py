"""What De-LightSAM needs from the Slicer it runs in, and how it gets it.

The decisions (oldest Slicer, packages for the running Python, whether PyTorch is usable) are plain functions,
tested under pytest; installing goes through an *installer*: Slicer's (the PyTorch extension and
``slicer.util.pip_install``) inside Slicer, a stand-in in tests. Nothing here imports torch unless asked whether
it works, and a torch that fails to import is reported, never raised.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
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
    """Whether PyTorch can be used: ``problem`` is None when it can, else one line saying what is wrong and what to
    do. ``missing``, ``tooOld`` and ``broken`` (installed but its import raises) tell the cases apart."""

    version: Optional[str] = None
    problem: Optional[str] = None
    missing: bool = False
    tooOld: bool = False
    broken: bool = False


def torchState() -> TorchState:
    """Looks at the installed torch: its metadata first, then an import (guarded: any exception means broken)."""
    version = installedVersion("torch")
    if version is None and importlib.util.find_spec("torch") is None:
        return TorchState(
            problem=_("PyTorch is not installed; click 'Install dependencies' (asks first)"), missing=True
        )
    if version is not None and versionTuple(version) < versionTuple(MINIMUM_TORCH_VERSION):
        return _tooOld(version)  # refused before importing: an old torch may not even import in this Python
    try:
        torch = importlib.import_module("torch")
    except Exception as error:  # OSError (a missing DLL), ImportError of a part of it, ...
        return TorchState(
            version,
            _(
                "PyTorch {version} is installed but cannot be imported ({error}); click 'Install dependencies' to "
                "reinstall it, then restart Slicer"
            ).format(version=version or "", error=_firstLine(error)),
            broken=True,
        )
    version = version or str(getattr(torch, "__version__", ""))
    if versionTuple(version) < versionTuple(MINIMUM_TORCH_VERSION):
        return _tooOld(version)
    return TorchState(version)


def _tooOld(version: str) -> TorchState:
    return TorchState(
        version,
        _(
            "PyTorch {version} is installed, but De-LightSAM needs {minimum} or later; uninstall it in the PyTorch Utils "
            "module, restart Slicer, then click 'Install dependencies'"
        ).format(version=version, minimum=MINIMUM_TORCH_VERSION),
        tooOld=True,
    )


def missingPackages(pythonVersion: Optional[Sequence[int]] = None) -> dict[str, str]:
    """The packages of ``pipRequirements`` that are not installed: import name -> pip requirement."""
    return {
        name: requirement
        for name, requirement in pipRequirements(pythonVersion).items()
        if importlib.util.find_spec(name) is None
    }


class Installer(Protocol):
    """How packages get installed: inside Slicer, :class:`SlicerInstaller`."""

    def installTorch(self, requirement: str) -> None: ...

    def uninstallTorch(self) -> None: ...

    def pipInstall(self, requirement: str) -> None: ...


class SlicerInstaller:
    """Slicer's ways to install: PyTorch through the PyTorch extension's ``PyTorchUtils`` (which picks the build for
    the computer's GPU and driver), anything else through ``slicer.util.pip_install``."""

    def installTorch(self, requirement: str) -> None:
        torchUtils = self._pyTorchUtils()
        if torchUtils.installTorch(askConfirmation=False, torchVersionRequirement=requirement) is None:
            raise DeLightSAMError(
                _("PyTorch was not installed; open the PyTorch Utils module to install it, then try again")
            )

    def uninstallTorch(self) -> None:
        self._pyTorchUtils().uninstallTorch()

    def pipInstall(self, requirement: str) -> None:
        import slicer.util

        slicer.util.pip_install(requirement)

    @staticmethod
    def _pyTorchUtils():
        try:
            import PyTorchUtils
        except ModuleNotFoundError:
            raise DeLightSAMError(
                _(
                    "De-LightSAM installs PyTorch through the PyTorch extension: install 'PyTorch' in the Extensions "
                    "Manager, restart Slicer, then try again"
                )
            ) from None
        return PyTorchUtils.PyTorchUtilsLogic()


def _firstLine(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0]}" if lines else type(error).__name__
