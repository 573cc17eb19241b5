"""Make slicer_names.json: the Slicer, CTK/PythonQt and PyTorchUtils names the Slicer face may call, per supported
Slicer version, read from the sources (Testing/test_slicer_names.py checks the glue against it).

Rerun when a Slicer version is added (edit VERSIONS) or the glue starts using another class (edit CLASSES)::

    git clone --bare https://github.com/Slicer/Slicer slicer.git          # or any up-to-date copy
    git clone --bare https://github.com/fepegar/SlicerPyTorch pytorch.git
    python Testing/slicer_names/extract.py slicer.git pytorch.git > Testing/slicer_names/slicer_names.json

What PythonQt exposes of a QObject class: its public slots, Q_PROPERTY and Q_INVOKABLE methods and its enums, and
those of its base classes; plus the PythonQt decorators Slicer declares for it (qSlicer*PythonQtDecorators.h). What
VTK's wrapping exposes of a vtk class: its public methods, the Get/Set/On/Off methods of its vtkGet/vtkSet/
vtkBoolean macros, and its enums, with those of its bases inside Slicer's tree (VTK's own, such as vtkObject's, are
not read: the test lists the few it uses). The
``slicer`` namespace: the documented attributes of slicer/__init__.py, its submodules, and every vtk*/q* class
header of the tree (each wrapped class has one). ``slicer.util``: the module's top-level functions and classes.
``PyTorchUtilsLogic``: the class's methods in PyTorchUtils.py.
"""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys

VERSIONS = {"5.8": "v5.8.0", "5.10": "v5.10.0", "5.12": "v5.12.3", "main": "main"}
CLASSES = {  # the receiver a test maps glue variables to -> the C++ class it is
    "slicer.app": "qSlicerApplication",
    "scriptedEffect": "qSlicerSegmentEditorScriptedEffect",
    "editorWidget": "qMRMLSegmentEditorWidget",
    "sliceWidget": "qMRMLSliceWidget",
    "layoutManager": "qSlicerLayoutManager",
}
VTK_CLASSES = {
    "mrmlScene": "vtkMRMLScene",
    "vtkMRMLLayoutNode": "vtkMRMLLayoutNode",
    "vtkMRMLSliceNode": "vtkMRMLSliceNode",
    "vtkMRMLSegmentationNode": "vtkMRMLSegmentationNode",
    "vtkSlicerSegmentationsModuleLogic": "vtkSlicerSegmentationsModuleLogic",
    "vtkSlicerSegmentationGeometryLogic": "vtkSlicerSegmentationGeometryLogic",
}
MACROS = {  # VTK macro -> the method names it declares for its first argument X
    "vtkGetMacro": ("Get{}",), "vtkSetMacro": ("Set{}",), "vtkBooleanMacro": ("{}On", "{}Off"),
    "vtkGetObjectMacro": ("Get{}",), "vtkSetObjectMacro": ("Set{}",), "vtkGetStringMacro": ("Get{}",),
    "vtkSetStringMacro": ("Set{}",), "vtkGetVector3Macro": ("Get{}",), "vtkSetVector3Macro": ("Set{}",),
    "vtkGetVectorMacro": ("Get{}",), "vtkSetVectorMacro": ("Set{}",), "vtkSetClampMacro": ("Set{}",),
    "vtkGetEnumMacro": ("Get{}",), "vtkSetEnumMacro": ("Set{}",), "vtkGetSmartPointerMacro": ("Get{}",),
    "vtkGetNewMacro": ("Get{}",), "vtkSetNewMacro": ("Set{}",),
}  # fmt: skip


def git(repo: str, *args: str) -> str:
    return subprocess.run(["git", "--git-dir", repo, *args], capture_output=True, text=True, check=True).stdout


def headers(repo: str, revision: str) -> dict[str, str]:
    """Class name -> path of its header, for every vtk*/q* header of the tree."""
    found = {}
    for path in git(repo, "ls-tree", "-r", "--name-only", revision).splitlines():
        name = path.rsplit("/", 1)[-1]
        if name.endswith(".h") and name[:1] in "vq" and (name.startswith("vtk") or name.startswith("q")):
            found.setdefault(name[:-2], path)
    return found


def _uncomment(text: str) -> str:
    return re.sub(r"//[^\n]*|/\*.*?\*/", "", text, flags=re.S)


def exposed(text: str, className: str) -> tuple[set[str], list[str]]:
    """(names PythonQt exposes, base class names) of ``className`` declared in header ``text``."""
    text = _uncomment(text)
    match = re.search(rf"class\s+(?:\w+_EXPORT\s+)?{className}\b\s*(?::([^{{]*))?\{{", text)
    if match is None:
        return set(), []
    bases = re.findall(r"(?:public|protected|private)?\s*(\w+)", match.group(1) or "")
    body = text[match.end() :]
    names = set(re.findall(r"Q_PROPERTY\s*\(\s*[\w:<>*&\s]+?\s+(\w+)\s+(?:READ|MEMBER)", body))
    names |= set(re.findall(r"Q_INVOKABLE\s+[^;{(]*?(\w+)\s*\(", body))
    for section in re.finditer(
        r"public\s+(?:slots|Q_SLOTS)\s*:(.*?)(?=\b(?:public|protected|private|signals|Q_SIGNALS)\b\s*\w*\s*:|\Z)",
        body,
        re.S,
    ):
        names |= set(re.findall(r"(\w+)\s*\([^;]*\)\s*(?:const)?\s*(?:override)?\s*[;{=]", section.group(1)))
    for enum in re.finditer(r"enum\s+(?:class\s+)?\w*\s*\{([^}]*)\}", body):
        names |= {value.split("=")[0].strip() for value in enum.group(1).split(",") if value.strip()}
    return {name for name in names if name.isidentifier()}, [
        base for base in bases if base not in ("public", "virtual")
    ]


def vtkExposed(text: str, className: str) -> tuple[set[str], list[str]]:
    """(names VTK's wrapping exposes, base class names) of ``className`` declared in header ``text``."""
    text = _uncomment(text)
    match = re.search(rf"class\s+(?:\w+_EXPORT\s+)?{className}\b\s*(?::([^{{]*))?\{{", text)
    if match is None:
        return set(), []
    bases = re.findall(r"public\s+(\w+)", match.group(1) or "")
    body = text[match.end() :]
    names = set()
    access = re.split(r"\b(public|protected|private)\s*:", body)
    sections = [code for label, code in zip(access[1::2], access[2::2]) if label == "public"]  # class: private first
    for section in sections:
        names |= set(re.findall(r"(\w+)\s*\([^;{]*\)\s*(?:const)?\s*(?:override)?\s*(?:[;{=]|VTK_)", section))
        for macro, argument in re.findall(r"\b(vtk\w+Macro)\s*\(\s*(\w+)", section):
            names |= {pattern.format(argument) for pattern in MACROS.get(macro, ())}
    for enum in re.finditer(r"enum\s+(?:class\s+)?\w*\s*(?::\s*\w+\s*)?\{([^}]*)\}", body):
        names |= {value.split("=")[0].strip() for value in enum.group(1).split(",") if value.strip()}
    return {name for name in names if name.isidentifier()}, bases


def decorators(repo: str, revision: str, className: str) -> set[str]:
    """Methods Slicer's PythonQt decorators add to ``className``: ``X(className* self, ...)`` and
    ``static_className_X(...)``."""
    names = set()
    for path in git(repo, "ls-tree", "-r", "--name-only", revision).splitlines():
        if path.endswith("PythonQtDecorators.h"):
            text = _uncomment(git(repo, "show", f"{revision}:{path}"))
            names |= set(re.findall(rf"\b(\w+)\s*\(\s*{className}\s*\*", text))
            names |= set(re.findall(rf"static_{className}_(\w+)\s*\(", text))
    return names


def classNames(repo: str, revision: str, className: str, found: dict[str, str], vtk: bool = False) -> set[str]:
    names, pending, seen = set(), [className], set()
    while pending:
        current = pending.pop()
        if current in seen or current not in found:
            continue  # Qt's and VTK's own bases: not read here
        seen.add(current)
        text = git(repo, "show", f"{revision}:{found[current]}")
        members, bases = vtkExposed(text, current) if vtk else exposed(text, current)
        names |= members if vtk else members | decorators(repo, revision, current)
        pending += bases
    return names


def pythonNames(source: str, className: str | None = None) -> set[str]:
    tree = ast.parse(source)
    if className is None:
        return {node.name for node in tree.body if isinstance(node, (ast.FunctionDef, ast.ClassDef))}
    (cls,) = [node for node in tree.body if isinstance(node, ast.ClassDef) and node.name == className]
    return {node.name for node in cls.body if isinstance(node, ast.FunctionDef)}


def slicerNamespace(repo: str, revision: str, found: dict[str, str]) -> set[str]:
    init = git(repo, "show", f"{revision}:Base/Python/slicer/__init__.py")
    names = set(re.findall(r"py:attribute::\s*(\w+)", init)) | set(re.findall(r'_createModule\("slicer\.(\w+)"', init))
    for path in git(repo, "ls-tree", "--name-only", f"{revision}:Base/Python/slicer").splitlines():
        if path.endswith(".py") and not path.startswith("_"):
            names.add(path[:-3])
    return names | set(found)


def main(slicerRepo: str, pyTorchRepo: str) -> None:
    data = {"versions": VERSIONS, "classes": {**CLASSES, **VTK_CLASSES}, "names": {}}
    for version, revision in VERSIONS.items():
        found = headers(slicerRepo, revision)
        names = {
            "slicer": slicerNamespace(slicerRepo, revision, found),
            "slicer.util": pythonNames(git(slicerRepo, "show", f"{revision}:Base/Python/slicer/util.py")),
        }
        for receiver, className in CLASSES.items():
            names[receiver] = classNames(slicerRepo, revision, className, found)
        for receiver, className in VTK_CLASSES.items():
            names[receiver] = classNames(slicerRepo, revision, className, found, vtk=True)
        names["PyTorchUtilsLogic"] = pythonNames(
            git(pyTorchRepo, "show", "HEAD:PyTorchUtils/PyTorchUtils.py"), "PyTorchUtilsLogic"
        )
        data["names"][version] = {receiver: sorted(values) for receiver, values in names.items()}
    data["pytorchutils_revision"] = git(pyTorchRepo, "rev-parse", "HEAD").strip()
    data["slicer_revisions"] = {
        version: git(slicerRepo, "rev-parse", revision).strip() for version, revision in VERSIONS.items()
    }
    json.dump(data, sys.stdout, indent=1, sort_keys=True)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main(*sys.argv[1:3])
