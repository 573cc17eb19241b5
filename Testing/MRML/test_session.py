"""The session (settings, installs, downloads, the one predictor) without Qt: with torch missing, broken or too old,
on a Slicer too old, with the pins of each Python, and the questions it asks through its callbacks."""

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
from DeLightSAMSlicerLib.Session import LOCAL_FILE, DeLightSAMSession, DictSettings

REPO = Path(__file__).resolve().parents[2]
SLICER = (5, 8)


class FakeInstaller:
    """Records what would be installed; ``effects`` say what each install changes in this process."""

    def __init__(self, **effects):
        self.calls = []
        self.effects = effects

    def installTorch(self, requirement):
        self.calls.append(("installTorch", requirement))
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


def _session(installer=None, slicerVersion=SLICER, **settings):
    session = DeLightSAMSession(DictSettings(), installer or FakeInstaller(), slicerVersion)
    if settings:
        session.setModelSettings(settings.get("checkpoint", registry.OFFICIAL_CHECKPOINT), settings.get("path", ""),
                                 settings.get("device", "cpu"))
    return session


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
    monkeypatch.delitem(sys.modules, "torch")
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
    entry = registry.CheckpointEntry(name="test-weights", filename="test-weights.pth",
                                     urls=(str(reference_weights_path),), description="test weights")
    monkeypatch.setitem(registry.CHECKPOINTS, entry.name, entry)
    return entry


def test_the_panel_status_never_fails_without_torch(torch_missing):
    status = _session().statusText()
    assert "PyTorch is not installed; click 'Install dependencies'" in status
    assert "Checkpoint: checkpoint 'delightsam' is not downloaded yet" in status
    assert "Device" not in status and "CPU" not in status


def test_download_weights_needs_no_torch(torch_missing, test_checkpoint):
    installer = FakeInstaller()
    session = _session(installer, checkpoint=test_checkpoint.name)
    questions = Questions()
    path = session.downloadCheckpoint(questions)
    assert path.read_bytes() == Path(test_checkpoint.urls[0]).read_bytes()
    assert len(questions.asked) == 1 and "Download 'test weights'" in questions.asked[0] and str(path) in questions.asked[0]
    assert installer.calls == []
    assert f"Checkpoint: {path}" in session.statusText()


def test_google_drive_download_installs_only_its_downloader(torch_missing, gdown_missing, monkeypatch,
                                                            reference_weights_path):
    entry = registry.CheckpointEntry(name="drive", filename="drive.pth", urls=("gdrive:FILEID",), description="drive")
    monkeypatch.setitem(registry.CHECKPOINTS, entry.name, entry)

    def download(id=None, output=None, quiet=False, **kwargs):
        output.write(reference_weights_path.read_bytes())

    installer = FakeInstaller(pipInstall=lambda: gdown_missing(download))
    session = _session(installer, checkpoint="drive")
    questions = Questions()
    assert session.downloadCheckpoint(questions).read_bytes() == reference_weights_path.read_bytes()
    gdown = Requirements.pipRequirements()["gdown"]
    assert installer.calls == [("pipInstall", gdown)] and gdown in questions.asked[0]


def test_a_declined_download_writes_nothing(test_checkpoint, tmp_path):
    session = _session(checkpoint=test_checkpoint.name)
    assert session.downloadCheckpoint(Questions(answer=False)) is None
    with pytest.raises(DeLightSAMError, match="the weights were not downloaded"):
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
    assert "PyTorch" not in session.statusText() and "Missing" not in session.statusText()


def test_a_broken_torch_is_reported_and_reinstalled(torch_broken):
    installer = FakeInstaller()
    session = _session(installer)
    status = session.statusText()
    assert "cannot be imported (OSError: libtorch_cpu.so: cannot open shared object file" in status
    assert "click 'Install dependencies' to reinstall it" in status
    questions = Questions()
    with pytest.raises(DeLightSAMError, match="PyTorch was reinstalled; restart Slicer"):
        session.installRequirements(questions)
    assert "PyTorch (reinstalled: it fails to import)" in questions.asked[0]
    assert installer.calls == [("uninstallTorch",), ("installTorch", ">=2.1")]


def test_a_torch_older_than_the_minimum_is_refused(monkeypatch):
    real = Requirements.installedVersion
    monkeypatch.setattr(Requirements, "installedVersion", lambda name: "1.13.1+cu117" if name == "torch" else real(name))
    installer = FakeInstaller()
    session = _session(installer)
    message = ("PyTorch 1.13.1+cu117 is installed, but De-LightSAM needs 2.1 or later; uninstall it in the PyTorch "
               "Utils module, restart Slicer, then click 'Install dependencies'")
    assert message in session.statusText()
    for job in (session.installRequirements, session.predictor):
        with pytest.raises(DeLightSAMError) as error:
            job(Questions())
        assert str(error.value) == message
    assert installer.calls == []


def test_a_slicer_older_than_5_8_is_refused_with_one_message(test_checkpoint):
    installer = FakeInstaller()
    session = _session(installer, slicerVersion=(5, 6), checkpoint=test_checkpoint.name)
    message = "De-LightSAM needs 3D Slicer 5.8 or later, this is 5.6: install a current Slicer from https://download.slicer.org"
    assert session.statusText() == message
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
    dependencies = [Requirement(text) for text in tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]]
    requiresPython = {"gdown==6.5.1": (3, 10), "gdown==5.2.0": (3, 8)}  # Requires-Python of those releases
    assert Requirements.pipRequirements((3, 9)) == {"gdown": "gdown==5.2.0"}
    for python in ((3, 9), (3, 12)):
        for name, pin in Requirements.pipRequirements(python).items():
            assert python >= requiresPython[pin]
            version = Requirement(pin).specifier
            (library,) = [d for d in dependencies if d.name == name and d.marker.evaluate({"python_version": "%d.%d" % python})]
            assert all(library.specifier.contains(str(spec.version)) for spec in version)


def test_version_numbers_are_read_as_releases():
    assert Requirements.versionTuple("2.1.0+cu121") == (2, 1, 0)
    assert Requirements.versionTuple("2.13.0.dev20250101") == (2, 13, 0)
    assert Requirements.versionTuple("2.0") < Requirements.versionTuple(Requirements.MINIMUM_TORCH_VERSION)
    assert Requirements.versionTuple("2.10.1") > Requirements.versionTuple("2.9")


def test_an_empty_local_path_says_to_pick_a_file():
    session = _session(checkpoint=LOCAL_FILE, path="")
    status = session.statusText()
    assert "no checkpoint file chosen: click 'Browse...'" in status and "folder" not in status
    with pytest.raises(CheckpointError, match="no checkpoint file chosen"):
        session.predictor(Questions())


def test_one_predictor_reloaded_only_when_the_settings_change(reference_weights_path):
    session = _session(checkpoint=LOCAL_FILE, path=str(reference_weights_path), device="cpu")
    first = session.predictor(Questions())
    assert session.predictor(Questions()) is first
    session.setModelSettings(LOCAL_FILE, str(reference_weights_path), "cpu")
    assert session.predictor(Questions()) is first
    assert f"loaded on {first.description}" in session.statusText()
    session.setModelSettings(LOCAL_FILE, str(reference_weights_path), "auto")
    second = session.predictor(Questions())
    assert second is not first and second.device.type == "cpu"


def test_a_stand_in_predictor_is_removed_also_when_the_block_fails():
    session = _session()
    standIn = object()
    with pytest.raises(ZeroDivisionError):
        with session.temporaryPredictor(standIn):
            assert session.predictor(Questions()) is standIn
            1 / 0
    assert session._predictor is None


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
    session.setModelSettings(LOCAL_FILE, "/data/w.pth", "cuda")
    assert settings == {"DeLightSAM/Device": "cuda", "DeLightSAM/Modality": "xray", "DeLightSAM/Checkpoint": LOCAL_FILE,
                        "DeLightSAM/CheckpointPath": "/data/w.pth"}
    assert DeLightSAMSession(settings).checkpointReference() == "/data/w.pth"


def test_the_slicer_side_imports_no_torch():
    """The module panel and the effect import these; a Slicer without torch must load them."""
    code = ("import sys; sys.path.insert(0, sys.argv[1]); "
            "import DeLightSAMSlicerLib.Session, DeLightSAMSlicerLib.MRMLLogic, DeLightSAMSlicerLib.Requirements; "
            "print('torch' in sys.modules)")
    run = subprocess.run([sys.executable, "-c", code, str(REPO / "DeLightSAM")], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "False"
