"""The Slicer application behind the host-free session: Slicer's user settings, Slicer's ways to install packages,
and the one session of a Slicer process (the module panel and the effect both use it)."""

import contextlib
import importlib
import sys
import types

import slicer
from slicer.i18n import tr as _

# The logic first: importing DeLightSAMSlicerLib is what finds the library (or says what to do when it is missing).
from DeLightSAMSlicerLib.Requirements import installedVersion
from DeLightSAMSlicerLib.Session import DeLightSAMSession
from DeLightSAMLib.errors import DeLightSAMError

_session = None


def sharedSession():
    """The De-LightSAM session of this Slicer (Slicer's settings and installers), made on first use."""
    global _session
    if _session is None:
        _session = DeLightSAMSession(
            SlicerSettings(), SlicerInstaller(), (slicer.app.majorVersion, slicer.app.minorVersion)
        )
    return _session


class SlicerSettings:
    """Slicer's per-user settings (``slicer.app.userSettings()``, the QSettings every module uses)."""

    def value(self, key, default=None):
        return slicer.app.userSettings().value(key, default)

    def setValue(self, key, value):
        slicer.app.userSettings().setValue(key, value)


class SlicerInstaller:
    """Slicer's ways to install: PyTorch through the PyTorch extension's ``PyTorchUtils`` (which picks the build for
    the computer's GPU and driver), anything else through ``slicer.util.pip_install``."""

    def installTorch(self, requirement, load=True):
        """``load=False``: PyTorchUtils' installTorch imports torch right after installing; for a reinstall over a
        torch that failed to import, that import would run against the old files still loaded in this process, so it
        is given a placeholder module instead, and Slicer restarts before torch is used."""
        torchUtils = self._pyTorchUtils()
        with placeholderModule("torch", enabled=not load):
            installed = torchUtils.installTorch(askConfirmation=False, torchVersionRequirement=requirement)
        if installed is None:
            raise DeLightSAMError(
                _("PyTorch was not installed; open the PyTorch Utils module to install it, then try again")
            )

    def uninstallTorch(self):
        self._pyTorchUtils().uninstallTorch()

    def pipInstall(self, requirement):
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


class _NotLoaded(types.ModuleType):
    """Stands in for a module that was installed but must not be imported in this process; its version is read from
    the installed metadata."""

    @property
    def __version__(self):
        importlib.invalidate_caches()
        return installedVersion(self.__name__) or ""


@contextlib.contextmanager
def placeholderModule(name, enabled=True):
    """Inside the block ``import name`` gives a ``_NotLoaded`` placeholder (when ``enabled``); afterwards what was
    there before is back (usually nothing), so the next process imports the installed package."""
    if not enabled:
        yield
        return
    saved = sys.modules.get(name)
    sys.modules[name] = _NotLoaded(name)
    try:
        yield
    finally:
        if saved is None:
            sys.modules.pop(name, None)
        else:
            sys.modules[name] = saved
