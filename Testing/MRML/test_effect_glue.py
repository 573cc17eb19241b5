"""The Segment Editor effect's glue, run without Slicer's GUI: SegmentEditorEffect.py imported over stand-ins for qt,
the scripted effect and the Slicer application, with a real MRML scene (slicer-core). What only Slicer can run is in
SegmentEditorDeLightSAMTest; the syntax-tree checks at the end hold the effect's source to the same rules.

Defects of issue 18 each test fails on: the scene-close observer, the timer and the run outliving the effect (1),
download dialogs naming the wrong model (2), the view selector showing one view while Apply uses another, and a stale
list after a layout change (5), writes without the hidden-segment question (6), a status line that fails after a
written result (8).
"""

from __future__ import annotations

import ast
import importlib.util
import sys
import types
from pathlib import Path

import pytest

from conftest import slicer

REPO = Path(__file__).resolve().parents[2]
EFFECT = REPO / "SegmentEditorDeLightSAM" / "SegmentEditorDeLightSAMLib" / "SegmentEditorEffect.py"
NOT_CONFIRMED, CONFIRMED_WITHOUT_DIALOG = 0, 1  # qSlicerSegmentEditorAbstractEffect::ConfirmationResult


class Signal:
    """A Qt object's connections: ``connect(signal, slot)`` and ``emit(signal)``."""

    def __init__(self):
        self.slots = {}

    def connect(self, signal, slot):
        self.slots.setdefault(signal, []).append(slot)

    def emit(self, signal):
        for slot in self.slots.get(signal, []):
            slot()


class ScriptedEffect(Signal):
    """Stands in for qSlicerSegmentEditorScriptedEffect: parameters, the hidden-segment question, 2D actors."""

    NotConfirmed, ConfirmedWithoutDialog, ConfirmedWithDialog = NOT_CONFIRMED, CONFIRMED_WITHOUT_DIALOG, 2

    def __init__(self):
        super().__init__()
        self.parameters = {}
        self.confirmation = CONFIRMED_WITHOUT_DIALOG
        self.asked = 0

    def parameter(self, name):
        return self.parameters.get(name, "")

    def setParameter(self, name, value):
        self.parameters[name] = str(value)

    def parameterSetNode(self):
        return self

    def GetSourceVolumeNode(self):  # the parameter set node's: no source volume (no DICOM header: no Auto)
        return None

    def confirmCurrentSegmentVisible(self):
        self.asked += 1
        return self.confirmation

    def removeActor2D(self, viewWidget, actor):
        pass


class ComboBox:
    def __init__(self):
        self.items, self.currentText = [], ""

    def blockSignals(self, blocked):
        return False

    def clear(self):
        self.items = []

    def addItem(self, text):
        self.items.append(text)


class LayoutManager:
    def __init__(self, views):
        self.views = list(views)

    def sliceViewNames(self):
        return tuple(self.views)

    def sliceWidget(self, name):
        return types.SimpleNamespace(mrmlSliceNode=lambda: f"slice node {name}") if name in self.views else None


@pytest.fixture()
def effectModule(monkeypatch):
    """SegmentEditorEffect.py imported as Slicer imports it, over stand-ins for what only the desktop application has."""
    qt = types.ModuleType("qt")
    qt.QApplication = types.SimpleNamespace(setOverrideCursor=lambda cursor: None, restoreOverrideCursor=lambda: None)
    qt.Qt = types.SimpleNamespace(WaitCursor=3)
    qt.QComboBox, qt.QCheckBox = ComboBox, type("QCheckBox", (), {})

    class QTimer:  # the worker driver's tick: ``timeout()`` fires only when a test calls ``fire()``
        def __init__(self):
            self.active = False
            self.slots = []

        def setInterval(self, milliseconds):
            pass

        def connect(self, signal, slot):
            self.slots.append(slot)

        def fire(self):
            for slot in self.slots:
                slot()

        def start(self):
            self.active = True

        def stop(self):
            self.active = False

    qt.QTimer = QTimer
    i18n = types.ModuleType("slicer.i18n")
    i18n.tr = i18n.translate = lambda *text: text[-1]
    editorEffects = types.ModuleType("SegmentEditorEffects")

    class AbstractScriptedSegmentEditorEffect:
        def __init__(self, scriptedEffect):
            self.scriptedEffect = scriptedEffect

    editorEffects.AbstractScriptedSegmentEditorEffect = AbstractScriptedSegmentEditorEffect
    for name, module in (("qt", qt), ("slicer.i18n", i18n), ("SegmentEditorEffects", editorEffects)):
        monkeypatch.setitem(sys.modules, name, module)
    monkeypatch.setattr(slicer, "i18n", i18n, raising=False)
    from DeLightSAMSlicerLib.Session import DictSettings

    settings = DictSettings()
    application = types.SimpleNamespace(
        majorVersion=5,
        minorVersion=10,
        testingEnabled=lambda: True,
        processEvents=lambda: None,
        userSettings=lambda: settings,
        layoutManager=lambda: application.layout,
        connect=lambda signal, slot: None,
    )
    application.layout = LayoutManager(["Red", "Yellow", "Green"])
    monkeypatch.setattr(slicer, "app", application, raising=False)
    monkeypatch.setattr(slicer, "mrmlScene", slicer.vtkMRMLScene(), raising=False)
    monkeypatch.syspath_prepend(str(REPO / "DeLightSAM"))
    monkeypatch.syspath_prepend(str(REPO / "SegmentEditorDeLightSAM"))  # the effect's own package, as in Slicer
    for name in [name for name in sys.modules if name.startswith(("DeLightSAMQt", "SegmentEditorDeLightSAMLib"))]:
        monkeypatch.delitem(sys.modules, name)
    spec = importlib.util.spec_from_file_location("SegmentEditorEffectUnderTest", EFFECT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _effect(module):
    scriptedEffect = ScriptedEffect()
    effect = module.SegmentEditorEffect(scriptedEffect)
    effect.viewSelector = ComboBox()
    effect.statusLabel = types.SimpleNamespace(text="")
    for button in ("applyButton", "allSlicesButton", "allFramesButton", "undoFramesButton", "boxFromSegmentButton"):
        setattr(effect, button, types.SimpleNamespace(enabled=True))
    return effect, scriptedEffect


def _closeCount(effect):
    calls = []
    effect.onSceneStartClose = lambda caller, event: calls.append(event)  # what the observer calls, looked up late
    return calls


@pytest.mark.parametrize("ending", ["cleanup", "destroyed"])
def test_the_scene_close_observer_goes_with_the_effect(effectModule, ending):
    """5.10 and later call cleanup() before deleting an effect, active or not; 5.8 only deletes it (destroyed())."""
    effect, scriptedEffect = _effect(effectModule)
    effect.activate()
    scene, tag = effect.sceneCloseObserver
    assert scene is slicer.mrmlScene and scene.GetCommand(tag) is not None
    if ending == "cleanup":
        effect.cleanup()
    else:
        scriptedEffect.emit("destroyed()")
    assert effect.sceneCloseObserver is None and scene.GetCommand(tag) is None
    scene.Clear(0)  # runs nothing of the deleted effect (it would touch destroyed widgets)


def test_a_closing_scene_still_reaches_an_active_effect(effectModule):
    effect, _scriptedEffect = _effect(effectModule)
    effect.activate()
    effect.statusLabel.text = "Done: ..."
    slicer.mrmlScene.Clear(0)
    assert effect.statusLabel.text == ""


def test_the_view_selector_shows_the_view_apply_uses(effectModule):
    effect, scriptedEffect = _effect(effectModule)
    scriptedEffect.setParameter("SliceView", "Green")
    slicer.app.layout.views = ["Red"]  # the stored view is not in this layout
    effect.layoutChanged()
    assert (effect.viewSelector.items, effect.viewSelector.currentText) == (["Red"], "Red")
    assert effect._sliceNode() == "slice node Red"  # what Apply segments is what the selector shows
    effect.optionWidgets, effect.boxModeCheckBox = {}, types.SimpleNamespace(checked=True)
    effect.updateMRMLFromGUI()  # another option changed: the shown view is not stored over the chosen one
    assert scriptedEffect.parameter("SliceView") == "Green"  # kept for a layout that has it again
    slicer.app.layout.views = ["Red", "Yellow", "Green"]
    effect.layoutChanged()
    assert (effect.viewSelector.items, effect.viewSelector.currentText) == (["Red", "Yellow", "Green"], "Green")
    assert effect._sliceNode() == "slice node Green"
    slicer.app.layout.views = []
    effect.layoutChanged()
    assert effect.viewSelector.items == [] and effect._sliceNode() is None
    effect.viewSelector.currentText = "Yellow"
    effect.onViewChanged()  # the user's choice is stored
    assert scriptedEffect.parameter("SliceView") == "Yellow"
    assert effectModule.resolveView("Yellow", ("Red", "Yellow")) == "Yellow"
    assert effectModule.resolveView("Green", ("Red", "Yellow")) == "Red"


class Recorder:
    """Stands in for the dialogs and the MRML logic: records what the effect asks."""

    def __init__(self):
        self.dialogs, self.runs = [], []

    def downloadDialog(self, model):
        recorder = self

        class Dialog:
            def __enter__(self):
                recorder.dialogs.append(model)
                return types.SimpleNamespace(report=lambda done, total: None)

            def __exit__(self, *exc):
                return False

        return Dialog()


def _driven(effectModule, monkeypatch):
    """An effect whose MRML logic and dialogs record their calls, with stand-in predictors of both models."""
    from DeLightSAMSlicerLib.MRMLLogic import SegmentationOptions

    recorder = Recorder()
    monkeypatch.setattr(effectModule, "DownloadProgressDialog", recorder.downloadDialog)
    effect, scriptedEffect = _effect(effectModule)
    result = types.SimpleNamespace(
        sceneClosed=False, cancelled=False, description="slice 3", voxelsAdded=5, voxelsRemoved=0, seconds=0.1
    )

    class Logic:
        """start... records which run the action makes; execute (the stand-in predictors run in this process, as
        the self-tests' do) returns what the run wrote."""

        framesSnapshot = None

        def __getattr__(self, name):
            def start(*args, **kwargs):
                recorder.runs.append(name)
                return name

            return start

        def execute(self, run, progress=None, predictor=None):
            return result

    effect.logic = Logic()
    effect._targets = lambda: ("volume", "slice node", "segmentation", "segment")
    effect._sequenceBrowser = lambda: "browser"
    effect._options = lambda: SegmentationOptions(modality="xray")
    return effect, scriptedEffect, recorder


WRITES = {  # the effect's actions that write, the MRML logic's run each makes, and the model it uses
    "onApply": ("startSlice", "automatic"),
    "onApplyAllSlices": ("startAllSlices", "automatic"),
    "onApplyAllFrames": ("startAllFrames", "automatic"),
    "onBoxFromSegment": ("startBoxFromSegment", "box"),
}


@pytest.mark.parametrize("action", WRITES)
def test_every_write_asks_about_a_hidden_segment_first(effectModule, monkeypatch, action):
    """As Slicer's Threshold, Islands, Margin and Hollow effects: a 'No' to the editor's question writes nothing."""
    effect, scriptedEffect, recorder = _driven(effectModule, monkeypatch)
    scriptedEffect.confirmation = NOT_CONFIRMED
    getattr(effect, action)()
    assert scriptedEffect.asked == 1 and recorder.runs == [] and recorder.dialogs == []
    scriptedEffect.confirmation = CONFIRMED_WITHOUT_DIALOG
    with effect.session.temporaryPredictor(object(), "automatic"), effect.session.temporaryPredictor(object(), "box"):
        getattr(effect, action)()
    assert recorder.runs == [WRITES[action][0]]


@pytest.mark.parametrize("action", WRITES)
def test_download_dialogs_name_the_model_the_run_loads(effectModule, monkeypatch, action):
    effect, _scriptedEffect, recorder = _driven(effectModule, monkeypatch)
    with effect.session.temporaryPredictor(object(), "automatic"), effect.session.temporaryPredictor(object(), "box"):
        getattr(effect, action)()
    model = WRITES[action][1]
    assert recorder.dialogs == [model]  # the load before the run (the run itself is handed that predictor)


def test_the_status_of_a_written_result_never_fails(effectModule, monkeypatch):
    """'Local file' with an empty path chosen meanwhile: the result was written, and the status says so."""
    from DeLightSAMSlicerLib.Session import LOCAL_FILE

    effect, _scriptedEffect, recorder = _driven(effectModule, monkeypatch)
    effect.session.setCheckpoint(LOCAL_FILE, "")
    with effect.session.temporaryPredictor(types.SimpleNamespace(description="stand-in on cpu")):
        effect.onApply()
    assert recorder.runs == ["startSlice"]
    assert effect.statusLabel.text.startswith("Done: slice 3: 5 voxels added, 0 removed, 0.1 s (stand-in on cpu; )")


class Ticket:
    """A worker request that has not been answered yet."""

    def __init__(self):
        self.done, self.error, self.cancelled = False, None, False

    def cancel(self):
        self.cancelled = True


class Client:
    """Stands in for the WorkerClient: requests are kept, never answered (the worker is busy)."""

    def __init__(self):
        self.tickets = []

    def predict(self, spec, views, options):
        self.tickets.append(Ticket())
        return self.tickets[-1]

    def poll(self):
        pass

    def stop(self):
        pass


class Run:
    """Stands in for a MRMLLogic SegmentationRun of three slices, one a batch."""

    def __init__(self):
        self.total, self.done, self.written, self.cancelled = 3, 0, [], False

    def nextBatch(self):
        if self.cancelled or self.done >= self.total:
            return None
        return types.SimpleNamespace(items=[self.done], views=[None], options=None)

    def write(self, batch, arrays):
        self.written.append(batch.items)
        self.done += 1

    def cancel(self):
        self.cancelled = True

    def finish(self):
        return types.SimpleNamespace(
            sceneClosed=False, cancelled=self.cancelled, description="", voxelsAdded=0, voxelsRemoved=0, seconds=0
        )


class Deleted:
    """A widget the editor widget has deleted: any use fails the test."""

    def __getattr__(self, name):
        raise AssertionError(f"a deleted widget was used ({name})")

    def __setattr__(self, name, value):
        raise AssertionError(f"a deleted widget was used ({name} = {value!r})")


def _inBackground(effectModule, monkeypatch, tmp_path):
    """Effects whose runs go to a stand-in worker that never answers; ``start(effect)`` begins a run of it."""
    from DeLightSAMSlicerLib.Background import BackgroundSegmenter

    driverModule = sys.modules["SegmentEditorDeLightSAMLib.WorkerDriver"]
    segmenter = BackgroundSegmenter(client=Client())
    monkeypatch.setitem(driverModule._shared, "segmenter", segmenter)
    recorder = Recorder()
    monkeypatch.setattr(sys.modules["DeLightSAMQt.Dialogs"], "DownloadProgressDialog", recorder.downloadDialog)
    checkpoint = tmp_path / "model.pth"
    checkpoint.write_bytes(b"weights")

    def start(effect):
        effect.session.checkpointFile = lambda *args: checkpoint
        run = Run()
        effect.worker.run(None, lambda options, writer: run)
        assert segmenter.busy and effect.worker.timer.active
        return run

    return segmenter, start


def _delete(effect, scriptedEffect, ending):
    if ending == "cleanup":
        effect.cleanup()
    for name in ("statusLabel", "applyButton", "allSlicesButton", "allFramesButton", "undoFramesButton"):
        setattr(effect, name, Deleted())
    setattr(effect, "boxFromSegmentButton", Deleted())
    if ending == "destroyed":
        scriptedEffect.emit("destroyed()")


@pytest.mark.parametrize("ending", ["cleanup", "destroyed"])
def test_a_run_under_way_ends_with_its_effect(effectModule, monkeypatch, tmp_path, ending):
    """Issue 18 defect 1's class: the editor widget deletes an effect while its run is under way. Its timer stops, its
    run is cancelled (nothing more is written, its result is not shown), and a tick queued before touches nothing."""
    segmenter, start = _inBackground(effectModule, monkeypatch, tmp_path)
    effect, scriptedEffect, _recorder = _driven(effectModule, monkeypatch)
    effect.activate()
    run = start(effect)
    ticket = segmenter.client.tickets[0]
    _delete(effect, scriptedEffect, ending)
    assert not effect.worker.timer.active
    assert not segmenter.busy and run.cancelled and ticket.cancelled and run.written == []
    ticket.done, ticket.arrays, ticket.header = True, [], {}  # the answer comes after all
    effect.worker.timer.fire()  # a tick queued before the timer stopped
    segmenter.tick()
    assert run.written == []


def test_closing_an_effect_leaves_the_run_of_another_alone(effectModule, monkeypatch, tmp_path):
    """The segmenter is shared by every effect instance: closing one cancels only the run it started."""
    segmenter, start = _inBackground(effectModule, monkeypatch, tmp_path)
    first, firstScripted, _recorder = _driven(effectModule, monkeypatch)
    second, _secondScripted, _recorder = _driven(effectModule, monkeypatch)
    start(first)
    run = start(second)  # supersedes the first effect's run
    _delete(first, firstScripted, "cleanup")
    assert segmenter.busy and not run.cancelled and second.worker.timer.active
    segmenter.client.tickets[-1].done = True
    segmenter.client.tickets[-1].arrays, segmenter.client.tickets[-1].header = [], {}
    second.worker.timer.fire()
    assert run.written == [[0]]


# ------------------------------------------------------------------------------------ the shared Qt side
def test_errors_fail_a_self_test_and_end_in_one_message_for_users(effectModule, monkeypatch):
    """Testing mode: the error itself propagates (Slicer shows no message box there, so it would be lost); otherwise
    a user's mistake is one plain message and the action ends."""
    from DeLightSAMLib.errors import DeLightSAMError
    from DeLightSAMQt.Dialogs import userErrorDisplay

    shown = []
    monkeypatch.setattr(slicer.util, "errorDisplay", lambda text, **kwargs: shown.append((text, kwargs)))
    with pytest.raises(DeLightSAMError, match="no checkpoint"):
        with userErrorDisplay("De-LightSAM segmentation failed."):
            raise DeLightSAMError("no checkpoint")
    assert shown == []
    monkeypatch.setattr(slicer.app, "testingEnabled", lambda: False)
    with userErrorDisplay("De-LightSAM segmentation failed."):
        raise DeLightSAMError("no checkpoint")
    assert shown == [("De-LightSAM segmentation failed.\n\nno checkpoint", {})]


def test_reinstalling_torch_does_not_import_it_in_this_process(effectModule, monkeypatch):
    """PyTorchUtils' installTorch imports torch right after installing; over a torch that failed to import, the
    installer hands it a placeholder instead, and this process's modules are as before afterwards."""
    from DeLightSAMQt.SlicerApp import SlicerInstaller, _NotLoaded

    seen = []

    class PyTorchUtilsLogic:
        def installTorch(self, askConfirmation=False, torchVersionRequirement=None):
            import torch  # what PyTorchUtils does after its light-the-torch run

            seen.append((torchVersionRequirement, torch))
            return torch

    pyTorchUtils = types.ModuleType("PyTorchUtils")
    pyTorchUtils.PyTorchUtilsLogic = PyTorchUtilsLogic
    monkeypatch.setitem(sys.modules, "PyTorchUtils", pyTorchUtils)
    before = sys.modules.get("torch")
    SlicerInstaller().installTorch(">=2.1", load=False)
    ((requirement, placeholder),) = seen
    assert requirement == ">=2.1" and isinstance(placeholder, _NotLoaded) and sys.modules.get("torch") is before
    SlicerInstaller().installTorch(">=2.1")  # a first install: PyTorchUtils imports the real one
    assert not isinstance(seen[1][1], _NotLoaded)


# ---------------------------------------------------------------------------------------- the source, as a tree
def _tree(path):
    return ast.parse(Path(path).read_text())


def _calls(tree, name):
    return [node for node in ast.walk(tree) if isinstance(node, ast.Call) and ast.unparse(node.func).endswith(name)]


SLICER_FACE = sorted(p for folder in ("DeLightSAM", "SegmentEditorDeLightSAM") for p in (REPO / folder).rglob("*.py"))


@pytest.mark.parametrize("path", SLICER_FACE, ids=lambda p: str(p.relative_to(REPO)))
def test_every_download_dialog_is_told_its_model(path):
    for call in _calls(_tree(path), "DownloadProgressDialog"):
        assert call.args or call.keywords, f"{path.name}:{call.lineno}: DownloadProgressDialog() names no model"


def test_the_effect_asks_about_hidden_segments_before_every_write():
    """Each action that runs (the worker driver's run makes the only writer) first asks, as Slicer's Islands and Margin
    effects do in their onApply; the box drag asks on the press (processInteractionEvents), so its release does not
    ask again."""
    tree = _tree(EFFECT)
    (effectClass,) = [
        node for node in tree.body if isinstance(node, ast.ClassDef) and node.name == "SegmentEditorEffect"
    ]
    methods = {node.name: node for node in effectClass.body if isinstance(node, ast.FunctionDef)}
    running = {name for name, method in methods.items() if _calls(method, "self.worker.run")}
    assert running == {*WRITES, "onBoxDrawn"}
    for name in WRITES:
        (asked,) = _calls(methods[name], "confirmCurrentSegmentVisible")
        (run,) = _calls(methods[name], "self.worker.run")
        assert asked.lineno < run.lineno, name
    assert _calls(methods["processInteractionEvents"], "confirmCurrentSegmentVisible")
    assert not _calls(methods["onBoxDrawn"], "confirmCurrentSegmentVisible")
    for name, method in methods.items():  # nothing else writes: the writer is made in _run only
        if name != "_run":
            assert not _calls(method, "EffectWriter"), name
    assert {"cleanup", "layoutChanged"} <= methods.keys()


@pytest.mark.parametrize("path", SLICER_FACE, ids=lambda p: str(p.relative_to(REPO)))
def test_the_slicer_face_imports_torch_only_to_run(path):
    """No ``import torch`` in the panel or the effect at all: torch is loaded by the library when a model loads."""
    for node in ast.walk(_tree(path)):
        if isinstance(node, ast.Import):
            assert "torch" not in {alias.name.split(".")[0] for alias in node.names}, f"{path.name}:{node.lineno}"
        elif isinstance(node, ast.ImportFrom) and node.module:
            assert node.module.split(".")[0] != "torch", f"{path.name}:{node.lineno}"


def test_the_error_display_restores_no_cursor_it_did_not_set():
    """Override cursors are set only by slicer.util.WaitCursor blocks (each restores its own): no bare set or restore
    anywhere in the Slicer face, so a caller's cursor survives an error."""
    for path in SLICER_FACE:
        tree = _tree(path)
        for name in ("setOverrideCursor", "restoreOverrideCursor"):
            assert not _calls(tree, name), f"{path.name} calls {name}"
