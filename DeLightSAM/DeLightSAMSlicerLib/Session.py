"""The De-LightSAM session: the one owner of the settings, the dependency installs, the weights downloads and the
single predictor of a Slicer session. The module panel and the Segment Editor effect both ask it.

Qt-free: settings go through a small interface (Slicer's user settings inside Slicer, a dict in tests), installs
through an installer (``Requirements``), and the user is asked through callbacks the caller passes in (``confirm``
for a question, ``progress`` for a download), so the session runs and is tested under ``slicer-core``. Nothing here
imports torch until a predictor is needed, and nothing fails because torch is missing or broken: the status says
so, and installing is the way out.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import logging
from pathlib import Path
from typing import Callable, Iterator, Optional, Protocol, Sequence

from DeLightSAMLib.checkpoint import cached_path, download_checkpoint, remote_size, resolve_checkpoint
from DeLightSAMLib.errors import CheckpointError, DeLightSAMError
from DeLightSAMLib.registry import CHECKPOINTS, MODALITIES, OFFICIAL_CHECKPOINT, get_checkpoint_entry
from DeLightSAMSlicerLib.i18n import tr as _
from DeLightSAMSlicerLib.Requirements import (
    MINIMUM_TORCH_VERSION,
    Installer,
    SlicerInstaller,
    checkSlicerVersion,
    missingPackages,
    torchState,
)

logger = logging.getLogger(__name__)

LOCAL_FILE = "local-file"  # checkpoint choice: the file in the local path setting
DEVICES = ("auto", "cuda", "mps", "cpu")
SETTINGS_PREFIX = "DeLightSAM/"
Confirm = Callable[[str], bool]  # asks the user a question; True to go on
DownloadProgress = Callable[[int, Optional[int]], None]  # (bytes done, total or None); raise to cancel


class Settings(Protocol):
    """What the session needs of a settings store (QSettings has exactly this)."""

    def value(self, key: str, default=None): ...

    def setValue(self, key: str, value) -> None: ...


class DictSettings(dict):
    """Settings kept in a dict: for tests and scripts."""

    def value(self, key: str, default=None):
        return self.get(key, default)

    def setValue(self, key: str, value) -> None:
        self[key] = value


class SlicerSettings:
    """Slicer's per-user settings (``slicer.app.userSettings()``, the QSettings every module uses)."""

    def value(self, key: str, default=None):
        import slicer

        return slicer.app.userSettings().value(key, default)

    def setValue(self, key: str, value) -> None:
        import slicer

        slicer.app.userSettings().setValue(key, value)


class DeLightSAMSession:
    """Settings, dependencies, weights and the one predictor; ``shared()`` is the instance of the Slicer session."""

    _shared: Optional["DeLightSAMSession"] = None

    @classmethod
    def shared(cls) -> "DeLightSAMSession":
        """The session's instance inside Slicer (Slicer's settings and installers), made on first use."""
        if cls._shared is None:
            import slicer

            cls._shared = cls(SlicerSettings(), SlicerInstaller(), (slicer.app.majorVersion, slicer.app.minorVersion))
        return cls._shared

    def __init__(self, settings: Settings, installer: Optional[Installer] = None,
                 slicerVersion: Optional[Sequence[int]] = None) -> None:
        self.settings = settings
        self.installer = installer
        self.slicerVersion = tuple(slicerVersion) if slicerVersion is not None else None
        self._predictor = None
        self._job: Optional[str] = None

    # ------------------------------------------------------------------ settings
    @staticmethod
    def checkpointChoices() -> list[tuple[str, str]]:
        """(name, description) of every registry checkpoint; LOCAL_FILE is the other choice."""
        return [(entry.name, entry.description) for entry in CHECKPOINTS.values()]

    @property
    def checkpointChoice(self) -> str:
        """A registry checkpoint name, or LOCAL_FILE."""
        return str(self.settings.value(SETTINGS_PREFIX + "Checkpoint", OFFICIAL_CHECKPOINT))

    @property
    def localCheckpointPath(self) -> str:
        return str(self.settings.value(SETTINGS_PREFIX + "CheckpointPath", "") or "")

    @property
    def device(self) -> str:
        device = str(self.settings.value(SETTINGS_PREFIX + "Device", "auto"))
        return device if device in DEVICES else "auto"

    @property
    def modality(self) -> str:
        """The modality chosen last (the effect starts with it)."""
        modality = str(self.settings.value(SETTINGS_PREFIX + "Modality", MODALITIES[0]))
        return modality if modality in MODALITIES else MODALITIES[0]

    def setModality(self, modality: str) -> None:
        self.settings.setValue(SETTINGS_PREFIX + "Modality", modality)

    def setModelSettings(self, checkpointChoice: str, localCheckpointPath: str, device: str) -> None:
        """Choose the weights and the device; the predictor is reloaded on next use if they changed."""
        if (checkpointChoice, localCheckpointPath, device) != (self.checkpointChoice, self.localCheckpointPath, self.device):
            self._predictor = None
        self.settings.setValue(SETTINGS_PREFIX + "Checkpoint", checkpointChoice)
        self.settings.setValue(SETTINGS_PREFIX + "CheckpointPath", localCheckpointPath)
        self.settings.setValue(SETTINGS_PREFIX + "Device", device)

    def checkpointReference(self) -> str:
        """Registry name or file path the predictor loads; raises when a local file is chosen but none is given."""
        if self.checkpointChoice != LOCAL_FILE:
            return self.checkpointChoice
        if not self.localCheckpointPath.strip():
            raise CheckpointError(_("no checkpoint file chosen: click 'Browse...' to pick a .pth file, or choose a "
                                    "downloadable checkpoint"))
        return self.localCheckpointPath.strip()

    # ------------------------------------------------------------------ status
    def statusText(self) -> str:
        """What is ready and what is missing, one line each, with what to do. Never raises."""
        try:
            checkSlicerVersion(self.slicerVersion)
        except DeLightSAMError as error:
            return str(error)
        lines = []
        torch = torchState()
        if torch.problem:
            lines.append(torch.problem)
        missing = missingPackages()
        if missing:
            lines.append(_("Missing Python packages: {names}; click 'Install dependencies' (asks first)").format(
                names=", ".join(missing)))
        try:
            path, _entry = resolve_checkpoint(self.checkpointReference())
            checkpoint = _("Checkpoint: {path}").format(path=path)
            if self._predictor is not None:
                checkpoint += " — " + _("loaded on {device}").format(device=getattr(self._predictor, "description", ""))
            lines.append(checkpoint)
        except DeLightSAMError as error:
            lines.append(_("Checkpoint: {problem}").format(problem=error))
        if torch.problem is None:
            lines += self._deviceStatus()
        return "\n".join(lines)

    def _deviceStatus(self) -> list[str]:
        try:
            from DeLightSAMLib.device import select_device

            device = self._predictor.device if self._predictor is not None else select_device(self.device)
        except DeLightSAMError as error:
            return [_("Device: {problem}").format(problem=error)]
        except Exception as error:  # torch imported, but its device query failed: report, never break the panel
            return [_("Device: {problem}").format(problem=f"{type(error).__name__}: {error}")]
        if device.type == "cpu":
            return [_("Running on the CPU (no GPU selected or found): expect a few seconds per slice.")]
        return []

    # ------------------------------------------------------------------ jobs
    @property
    def busy(self) -> bool:
        return self._job is not None

    @contextlib.contextmanager
    def job(self, description: str) -> Iterator[None]:
        """Runs one job at a time: a second one while another runs (a click during a run's event processing) is
        refused with a message."""
        if self._job is not None:
            raise DeLightSAMError(_("De-LightSAM is busy ({job}); wait until it has finished").format(job=self._job))
        self._job = description
        try:
            yield
        finally:
            self._job = None

    def installRequirements(self, confirm: Confirm) -> None:
        """Install what is missing, only after ``confirm``: torch through the PyTorch extension, the rest with pip.

        A torch older than MINIMUM_TORCH_VERSION is refused with what to do; a torch that fails to import is
        reinstalled, after which Slicer must restart (the failed import cannot be undone in this process).
        """
        checkSlicerVersion(self.slicerVersion)
        torch = torchState()
        if torch.tooOld:
            raise DeLightSAMError(torch.problem)
        packages = missingPackages()
        if not (torch.missing or torch.broken or packages):
            return
        if self.installer is None:
            raise DeLightSAMError(_("cannot install Python packages here; install torch>={minimum} and {packages} with "
                                    "pip").format(minimum=MINIMUM_TORCH_VERSION, packages=" ".join(packages.values())))
        names = ([_("PyTorch (reinstalled: it fails to import)") if torch.broken else _("PyTorch")]
                 if torch.missing or torch.broken else []) + list(packages)
        if not confirm(_("De-LightSAM needs these Python packages: {names}. Install them now? This needs a network "
                         "connection and may take several minutes.").format(names=", ".join(names))):
            raise DeLightSAMError(_("installation cancelled; De-LightSAM cannot run without its Python packages"))
        if torch.broken:
            self.installer.uninstallTorch()
        if torch.missing or torch.broken:
            self.installer.installTorch(f">={MINIMUM_TORCH_VERSION}")
        for requirement in packages.values():
            self.installer.pipInstall(requirement)
        importlib.invalidate_caches()
        if torch.broken:
            raise DeLightSAMError(_("PyTorch was reinstalled; restart Slicer to use it"))
        still = list(missingPackages()) + (["torch"] if torchState().problem else [])
        if still:
            raise DeLightSAMError(_("{names} could not be imported after installation; restart Slicer and try "
                                    "again").format(names=", ".join(still)))

    def downloadCheckpoint(self, confirm: Confirm, progress: Optional[DownloadProgress] = None) -> Optional[Path]:
        """Download the chosen registry checkpoint into the per-user cache after ``confirm`` (size shown); None if the
        user said no. Needs no torch: only the downloader (gdown for Google Drive) is installed first, if missing."""
        checkSlicerVersion(self.slicerVersion)
        if self.checkpointChoice == LOCAL_FILE:
            raise CheckpointError(_("a local checkpoint file is chosen: there is nothing to download"))
        entry = get_checkpoint_entry(self.checkpointChoice)
        self._installDownloader(entry.urls, confirm)
        size = entry.size_bytes or remote_size(entry.urls[0])
        sizeText = (_("{megabytes} MB").format(megabytes=f"{size / 1e6:.0f}") if size
                    else _("about 52 MB; the publisher does not state the size"))
        if not confirm(_("Download '{description}' ({size}) to {path}?").format(
                description=entry.description, size=sizeText, path=cached_path(entry.name))):
            return None
        return download_checkpoint(entry.name, progress=progress)

    def _installDownloader(self, urls: Sequence[str], confirm: Confirm) -> None:
        if not any(url.startswith("gdrive:") for url in urls) or importlib.util.find_spec("gdown") is not None:
            return
        requirement = missingPackages().get("gdown")
        if self.installer is None or requirement is None:
            return  # the download reports what is missing
        if not confirm(_("Downloading from Google Drive needs the Python package gdown ({requirement}). Install it "
                         "now?").format(requirement=requirement)):
            raise DeLightSAMError(_("download cancelled; the weights were not downloaded"))
        self.installer.pipInstall(requirement)
        importlib.invalidate_caches()

    # ------------------------------------------------------------------ the predictor
    def predictor(self, confirm: Confirm, progress: Optional[DownloadProgress] = None):
        """The session's predictor, loaded on first use: asks (``confirm``) to install what is missing and to
        download the weights, with ``progress`` for the download."""
        if self._predictor is None:
            self.installRequirements(confirm)
            reference = self.checkpointReference()
            try:
                resolve_checkpoint(reference)
            except CheckpointError:
                if self.checkpointChoice == LOCAL_FILE:
                    raise
                if self.downloadCheckpoint(confirm, progress) is None:
                    raise DeLightSAMError(_("the weights were not downloaded; De-LightSAM cannot segment without them"))
            from DeLightSAMLib.predictor import Predictor

            self._predictor = Predictor.from_checkpoint(reference, device=self.device)
            logger.info("De-LightSAM loaded %s on %s", reference, self._predictor.description)
        return self._predictor

    def predictorProvider(self, confirm: Confirm, progress: Optional[DownloadProgress] = None) -> Callable[[], object]:
        """A zero-argument callable for the MRML logic: ``predictor(confirm, progress)``."""
        return lambda: self.predictor(confirm, progress)

    @contextlib.contextmanager
    def temporaryPredictor(self, predictor) -> Iterator[None]:
        """Use ``predictor`` inside the block (self-tests' stand-ins); the previous one is back afterwards, also when
        the block raises."""
        previous, self._predictor = self._predictor, predictor
        try:
            yield
        finally:
            self._predictor = previous
