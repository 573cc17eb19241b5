"""Every Slicer, CTK/PythonQt and PyTorchUtils name the Slicer face calls exists in every supported Slicer version.

The names the glue uses are read from its syntax tree (attributes of ``slicer``, ``slicer.util``, ``slicer.app``, the
scripted effect, the editor widget, slice widgets, the layout manager and ``PyTorchUtilsLogic``); the names each
version has come from Testing/slicer_names/slicer_names.json, which Testing/slicer_names/extract.py makes from
Slicer's and SlicerPyTorch's sources (its docstring says how to rerun it). A name missing in a version fails here,
naming the name, the file and line, and the version.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
NAMES = json.loads((REPO / "Testing" / "slicer_names" / "slicer_names.json").read_text())
SUPPORTED = ["5.8", "5.10", "5.12", "main"]  # Requirements.MINIMUM_SLICER_VERSION is 5.8
GLUE = sorted(p for folder in ("DeLightSAM", "SegmentEditorDeLightSAM") for p in (REPO / folder).rglob("*.py"))

# What a glue expression is, by its source text -> the list in slicer_names.json its attributes are checked against.
RECEIVERS = {
    "slicer": "slicer",
    "slicer.util": "slicer.util",
    "slicer.app": "slicer.app",
    "scriptedEffect": "scriptedEffect",
    "self.scriptedEffect": "scriptedEffect",
    "effect": "scriptedEffect",  # the self-test's editorWidget.activeEffect()
    "instance": "scriptedEffect",  # registerEditorEffect's and clone()'s new qSlicerSegmentEditorScriptedEffect
    "clonedEffect": "scriptedEffect",
    "slicer.qSlicerSegmentEditorAbstractEffect": "scriptedEffect",  # its enums, through the class
    "editorWidget": "editorWidget",
    "sliceWidget": "sliceWidget",
    "viewWidget": "sliceWidget",
    "layoutManager": "layoutManager",
    "slicer.app.layoutManager()": "layoutManager",
    "torchUtils": "PyTorchUtilsLogic",
    # VTK-wrapped classes the self-tests drive (the MRML logic's own calls run under slicer-core in Testing/MRML)
    "slicer.mrmlScene": "mrmlScene",
    "slicer.vtkMRMLLayoutNode": "vtkMRMLLayoutNode",
    "sliceNode": "vtkMRMLSliceNode",
    "segmentation": "vtkMRMLSegmentationNode",
    "slicer.vtkSlicerSegmentationsModuleLogic": "vtkSlicerSegmentationsModuleLogic",
    "geometryLogic": "vtkSlicerSegmentationGeometryLogic",
}
# What PythonQt and Qt give every wrapped QObject (PythonQt's connect/delete/className, QObject's blockSignals,
# QCoreApplication's processEvents), and VTK every vtkObject: not Slicer's, so not in Slicer's headers.
QT_AND_PYTHONQT = {"connect", "disconnect", "delete", "className", "blockSignals", "objectName", "processEvents"}
# vtkObject's (VTK's own base, outside Slicer's tree).
QT_AND_PYTHONQT |= {"AddObserver", "RemoveObserver", "GetCommand", "HasObserver", "Modified"}


def _uses(path: Path) -> list[tuple[str, str, int]]:
    """(list name, attribute, line) for every attribute of a known receiver the file reads, calls or sets."""
    uses = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Attribute):
            receiver = RECEIVERS.get(ast.unparse(node.value))
            if receiver is not None:
                uses.append((receiver, node.attr, node.lineno))
    return uses


def test_the_name_lists_cover_every_supported_version():
    assert sorted(NAMES["versions"]) == sorted(SUPPORTED)
    for version in SUPPORTED:
        assert set(NAMES["names"][version]) >= set(RECEIVERS.values()), version


def test_the_extraction_reads_what_slicer_s_source_says():
    """Facts read by hand in Slicer's source, which the extraction must reproduce: cleanup() came in 5.10;
    confirmCurrentSegmentVisible and its results, layoutChanged hooks, the application's version properties, the
    testingEnabled decorator, pip_install and PyTorchUtils' installTorch/uninstallTorch are in every version."""
    names = NAMES["names"]
    assert "cleanup" not in names["5.8"]["scriptedEffect"]
    for version in SUPPORTED:
        effect, app = set(names[version]["scriptedEffect"]), set(names[version]["slicer.app"])
        assert {"confirmCurrentSegmentVisible", "NotConfirmed", "ConfirmedWithDialog", "setParameter"} <= effect
        assert version == "5.8" or "cleanup" in effect
        assert {"majorVersion", "minorVersion", "userSettings", "testingEnabled", "layoutManager"} <= app
        assert {"pip_install", "WaitCursor", "tryWithErrorDisplay"} <= set(names[version]["slicer.util"])
        assert {"installTorch", "uninstallTorch"} <= set(names[version]["PyTorchUtilsLogic"])
        assert {"qMRMLSegmentEditorWidget", "vtkMRMLScene", "app", "mrmlScene", "util"} <= set(names[version]["slicer"])


def test_the_glue_uses_names_through_the_receivers_this_test_knows():
    """The check sees the glue: each receiver kind is used somewhere (a renamed variable would hide its names)."""
    seen = {receiver for path in GLUE for receiver, _name, _line in _uses(path)}
    assert seen == set(RECEIVERS.values())


@pytest.mark.parametrize("version", SUPPORTED)
def test_every_name_the_glue_uses_exists_in_each_supported_slicer(version):
    available = {receiver: set(names) | QT_AND_PYTHONQT for receiver, names in NAMES["names"][version].items()}
    missing = [
        f"{path.relative_to(REPO)}:{line}: {receiver}.{name}"
        for path in GLUE
        for receiver, name, line in _uses(path)
        if name not in available[receiver]
    ]
    assert missing == [], f"missing in Slicer {version} ({NAMES['versions'][version]}): " + "; ".join(missing)


# Rerunning the extraction needs clones of Slicer and SlicerPyTorch (git directories), which a fresh checkout does
# not have: the test exists only when both are named, so that it is never a skip that CI would count as a failure.
_CLONES = (os.environ.get("DELIGHTSAM_SLICER_GIT"), os.environ.get("DELIGHTSAM_SLICERPYTORCH_GIT"))

if all(_CLONES):

    def test_the_committed_lists_are_what_the_script_makes():
        """The committed file is exactly what extract.py makes from the clones named by DELIGHTSAM_SLICER_GIT and
        DELIGHTSAM_SLICERPYTORCH_GIT."""
        script = REPO / "Testing" / "slicer_names" / "extract.py"
        run = subprocess.run([sys.executable, str(script), *_CLONES], capture_output=True, text=True)
        assert run.returncode == 0, run.stderr
        made = json.loads(run.stdout)
        if made["slicer_revisions"] != NAMES["slicer_revisions"]:
            pytest.fail("the clones' branches have moved on since the file was made: rerun extract.py and commit it")
        assert made == NAMES
