"""Packaging and layering rules that CI can check without Slicer: every script is packaged, every file compiles
and passes pyflakes, each layer imports only what it may."""

from __future__ import annotations

import ast
import json
import re
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SLICER_DIRS = ["DeLightSAM", "SegmentEditorDeLightSAM"]


def _python_files(*folders):
    return sorted(p for folder in folders for p in (REPO / folder).rglob("*.py") if "__pycache__" not in p.parts)


def _cmake_list(cmake: Path, variable: str) -> list[str]:
    text = cmake.read_text()
    match = re.search(rf"set\({variable}\s+(.*?)\)", text, re.S)
    assert match, f"{variable} not set in {cmake}"
    module = re.search(r"set\(MODULE_NAME (\w+)\)", text).group(1)
    return [item.replace("${MODULE_NAME}", module) for item in match.group(1).split()]


def test_every_script_and_resource_is_packaged():
    packaged = set()
    for folder in SLICER_DIRS:
        cmake = REPO / folder / "CMakeLists.txt"
        packaged |= {f"{folder}/{name}" for name in _cmake_list(cmake, "MODULE_PYTHON_SCRIPTS")}
        for resource in _cmake_list(cmake, "MODULE_PYTHON_RESOURCES"):
            assert (REPO / folder / resource).is_file(), resource
    for packages in ("DELIGHTSAMLIB_PYTHON_SCRIPTS", "DELIGHTSAMSLICERLIB_PYTHON_SCRIPTS"):
        packaged |= set(_cmake_list(REPO / "DeLightSAM" / "CMakeLists.txt", packages))
    on_disk = {str(p.relative_to(REPO)) for p in _python_files(*SLICER_DIRS, "DeLightSAMLib", "DeLightSAMSlicerLib")}
    assert on_disk == packaged


def test_extension_metadata_and_catalog_entry():
    text = (REPO / "CMakeLists.txt").read_text()
    for field in (
        "EXTENSION_HOMEPAGE",
        "EXTENSION_CATEGORY",
        "EXTENSION_CONTRIBUTORS",
        "EXTENSION_DESCRIPTION",
        "EXTENSION_ICONURL",
        "EXTENSION_SCREENSHOTURLS",
    ):
        assert re.search(rf"set\({field} \"[^\"]+\"\)", text), field
    assert 'set(EXTENSION_DEPENDS "PyTorch")' in text and "project(DeLightSAM)" in text and "## NEXT_MODULE" in text
    for folder in SLICER_DIRS:
        assert f"add_subdirectory({folder})" in text
    entry = json.loads((REPO / "DeLightSAM.json").read_text())
    assert entry["build_dependencies"] == ["PyTorch"] and entry["category"] == "Segmentation"
    assert {"scm_url", "scm_revision", "tier"} <= entry.keys()
    assert (REPO / "LICENSE").read_text().lstrip().startswith("Apache License")


# ExtensionsIndex's catalog schema (schemas/slicer-extension-catalog-entry-schema-v1.0.2.json): the allowed keys
# (additionalProperties is false), their JSON types, and the required ones.
CATALOG_SCHEMA_KEYS = {
    "$schema": str,
    "category": str,
    "scm_url": str,
    "scm_revision": str,
    "scm_type": str,
    "build_dependencies": list,
    "dicom_support_rule": str,
    "build_subdirectory": str,
    "enabled": bool,
    "tier": int,
}


def test_catalog_entry_passes_the_extensions_index_checks():
    """The schema fields, and the formatting ExtensionsIndex's prettier check wants (prettier 3 with the
    multiline-arrays plugin, wrap threshold 0): two-space indent, every non-empty array one item per line, LF only,
    a final newline. For plain JSON that is exactly json.dumps(indent=2)."""
    raw = (REPO / "DeLightSAM.json").read_bytes()
    assert b"\r" not in raw
    text = raw.decode("utf-8")
    entry = json.loads(text)
    assert text == json.dumps(entry, indent=2, ensure_ascii=False) + "\n"
    assert {"$schema", "category", "scm_url"} <= entry.keys() <= CATALOG_SCHEMA_KEYS.keys()
    for key, value in entry.items():
        assert type(value) is CATALOG_SCHEMA_KEYS[key], key
    assert 1 <= entry["tier"] <= 5 and all(isinstance(name, str) for name in entry["build_dependencies"])
    assert re.fullmatch(
        r"https://raw\.githubusercontent\.com/Slicer/Slicer/main/Schemas/"
        r"slicer-extension-catalog-entry-schema-v1\.0\.[0-2]\.json#?",
        entry["$schema"],
    )
    assert entry["scm_url"].startswith("https://") and entry["scm_url"].rstrip("/").split("/")[-1].startswith("Slicer")


def _installed_top_level_scripts(folder: str) -> list[str]:
    """The .py files a module's CMakeLists installs at the top of qt-scripted-modules (Slicer loads each as a
    module): the module's SCRIPTS without a folder, and any library script without one."""
    cmake = REPO / folder / "CMakeLists.txt"
    scripts = _cmake_list(cmake, "MODULE_PYTHON_SCRIPTS")
    if "DELIGHTSAMLIB_PYTHON_SCRIPTS" in cmake.read_text():
        scripts += _cmake_list(cmake, "DELIGHTSAMLIB_PYTHON_SCRIPTS")
    return [name for name in scripts if "/" not in name]


def _text_value(node) -> str:
    """A string literal, or the literal inside _("...") / translate(context, "..."); '' otherwise."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.Call) and node.args:
        return _text_value(node.args[-1])
    if isinstance(node, ast.List):
        return " ".join(_text_value(item) for item in node.elts)
    return ""


@pytest.mark.parametrize("folder", SLICER_DIRS)
def test_every_installed_top_level_script_is_a_complete_scripted_module(folder):
    """Slicer's scripted-module factory loads every .py at the top of qt-scripted-modules as a module and needs a
    class of the file's name; ScriptedLoadableModule registers a self-test that looks up <Name>Test; Slicer's generic
    module tests assert non-empty categories, contributors and acknowledgement."""
    scripts = _installed_top_level_scripts(folder)
    assert scripts == [f"{folder}.py"]
    for script in scripts:
        name = script[: -len(".py")]
        tree = ast.parse((REPO / folder / script).read_text())
        classes = {node.name: node for node in tree.body if isinstance(node, ast.ClassDef)}
        assert name in classes and [base.id for base in classes[name].bases] == ["ScriptedLoadableModule"]
        assert f"{name}Test" in classes and [base.id for base in classes[f"{name}Test"].bases] == [
            "ScriptedLoadableModuleTest"
        ]
        texts = {}
        for node in ast.walk(classes[name]):
            if isinstance(node, (ast.Assign, ast.AugAssign)):
                target = node.targets[0] if isinstance(node, ast.Assign) else node.target
                if isinstance(target, ast.Attribute) and ast.unparse(target.value) == "self.parent":
                    texts[target.attr] = texts.get(target.attr, "") + _text_value(node.value)
        for attribute in ("title", "categories", "contributors", "helpText", "acknowledgementText"):
            assert texts.get(attribute, "").strip(), f"{script}: parent.{attribute} is empty"


def test_module_icon_is_a_128_pixel_png():
    data = (REPO / "DeLightSAM" / "Resources" / "Icons" / "DeLightSAM.png").read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert struct.unpack(">II", data[16:24]) == (128, 128)


def test_all_python_compiles_and_passes_pyflakes():
    files = [str(p) for p in _python_files(*SLICER_DIRS, "DeLightSAMLib", "Testing", "benchmarks")]
    result = subprocess.run([sys.executable, "-m", "pyflakes", *files], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    for path in files:
        compile(Path(path).read_text(), path, "exec")


# Files in `ruff format` style (pyproject.toml [tool.ruff]); a file joins when it is written or next reworked.


def test_ruff_lint_and_format_pass():
    lint = subprocess.run(
        [sys.executable, "-m", "ruff", "check", "--no-cache", "."], cwd=REPO, capture_output=True, text=True
    )
    assert lint.returncode == 0, lint.stdout + lint.stderr
    formatting = subprocess.run(
        [sys.executable, "-m", "ruff", "format", "--check", "--no-cache", "."],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert formatting.returncode == 0, formatting.stdout + formatting.stderr


def _imports(path: Path, full: bool = False) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            names.add(node.module)
    return names if full else {name.split(".")[0] for name in names}


@pytest.mark.parametrize("path", _python_files("DeLightSAMLib"), ids=lambda p: p.name)
def test_library_never_imports_slicer_vtk_or_qt(path):
    assert not _imports(path) & {"slicer", "vtk", "qt", "ctk", "vtkmodules"}


@pytest.mark.parametrize("path", _python_files("DeLightSAMSlicerLib"), ids=lambda p: p.name)
def test_slicer_lib_imports_no_gui_and_no_torch(path):
    """The package runs under slicer-core (no Qt) and on a Slicer without torch: torch comes only through the
    library, when a predictor is loaded."""
    imports = _imports(path)
    assert not imports & {"qt", "ctk", "SegmentEditorEffects", "torch"}
    assert "slicer.ScriptedLoadableModule" not in _imports(path, full=True)


def test_gui_files_use_the_session_and_the_mrml_logic_openly():
    """The effect and the module panel import the session (the one owner of the predictor) and the MRML logic at
    the top of the file, not through each other; neither imports the library there (importing the package first
    is what makes the library importable from a source checkout)."""
    effect = REPO / "SegmentEditorDeLightSAM" / "SegmentEditorDeLightSAMLib" / "SegmentEditorEffect.py"
    module = REPO / "DeLightSAM" / "DeLightSAM.py"
    for path, expected in (
        (effect, {"DeLightSAMQt.SlicerApp", "DeLightSAMQt.Dialogs", "DeLightSAMSlicerLib.MRMLLogic"}),
        (module, {"DeLightSAMQt.SlicerApp", "DeLightSAMQt.Dialogs", "DeLightSAMSlicerLib.Session"}),
    ):
        top = {node.module for node in ast.parse(path.read_text()).body if isinstance(node, ast.ImportFrom)}
        assert expected <= top
        assert not {name for name in top if name.split(".")[0] == "DeLightSAMLib"}


FACES = {  # front end -> the folders it is made of and the top-level names it is imported by
    "slicer": (["DeLightSAM", "SegmentEditorDeLightSAM"], {"DeLightSAM", "DeLightSAMQt", "SegmentEditorDeLightSAMLib"}),
    "web": (["DeLightSAMWeb"], {"DeLightSAMWeb"}),
}


@pytest.mark.parametrize("face", FACES)
def test_front_ends_never_import_each_other(face):
    folders, _names = FACES[face]
    if not any((REPO / folder).is_dir() for folder in folders):
        pytest.skip(f"no {face} front end in this tree yet")
    others = set().union(*(names for other, (_, names) in FACES.items() if other != face))
    for path in _python_files(*[folder for folder in folders if (REPO / folder).is_dir()]):
        assert not _imports(path) & others, f"{path.relative_to(REPO)} imports another front end"


def test_the_web_face_imports_no_qt():
    if not (REPO / "DeLightSAMWeb").is_dir():
        pytest.skip("no DeLightSAMWeb folder in this tree yet")
    for path in _python_files("DeLightSAMWeb"):
        assert not _imports(path) & {"qt", "ctk", "PythonQt", "SegmentEditorEffects"}, path.relative_to(REPO)


@pytest.mark.parametrize("path", _python_files("DeLightSAMSlicerLib"), ids=lambda p: p.name)
def test_the_logic_knows_no_front_end_and_no_slicer_application(path):
    """The one logic runs in any host: it imports no face and never reaches for ``slicer.app`` (the Slicer face's
    DeLightSAMQt.SlicerApp binds the session to the application)."""
    faces = set().union(*(names for _folders, names in FACES.values()))
    assert not _imports(path) & faces
    tree = ast.parse(path.read_text())
    uses = [
        node.lineno for node in ast.walk(tree) if isinstance(node, ast.Attribute) and ast.unparse(node) == "slicer.app"
    ]
    assert uses == [], f"{path.name} uses slicer.app at lines {uses}"


def test_the_effect_reaches_the_shared_dialogs_not_the_module_panel():
    """The effect and the module panel share DeLightSAMQt; the effect never imports the panel's module."""
    effect = REPO / "SegmentEditorDeLightSAM" / "SegmentEditorDeLightSAMLib" / "SegmentEditorEffect.py"
    assert "DeLightSAM" not in _imports(effect)
    assert (REPO / "DeLightSAM" / "DeLightSAMQt" / "__init__.py").is_file()  # a package: Slicer loads no module from it


def test_no_large_files_in_the_repository():
    tracked = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True).stdout.split()
    big = [name for name in tracked if (REPO / name).is_file() and (REPO / name).stat().st_size > 1_000_000]
    assert big == []


_IMPORT_AS_SLICER_DOES = """
import ast, sys
module_file = sys.argv[1] + "/DeLightSAM.py"
sys.path.append(sys.argv[1])  # what Slicer adds for a scripted module: the module's own folder
before = list(sys.path)
# DeLightSAM.py's path bootstrap, run as Slicer runs it before the module's imports (the rest of the file needs Qt)
source = open(module_file).read()
bootstrap = [node for node in ast.parse(source).body if getattr(node, "name", "") == "addSourceCheckoutOfTheLogicToPath"]
namespace = {}
exec("import importlib.util, os, sys\\n" + ast.get_source_segment(source, bootstrap[0]), namespace)
namespace["addSourceCheckoutOfTheLogicToPath"](module_file)
try:
    import DeLightSAMSlicerLib
    import DeLightSAMLib.registry
except ModuleNotFoundError as error:
    print("error:", error)
else:
    print(DeLightSAMLib.__file__)
    print([folder for folder in sys.path if folder not in before])
"""


def _import_as_slicer_does(module_folder: Path, cwd: Path) -> list[str]:
    """Import the package with only the module folder on sys.path (no site-packages: -S; ``cwd`` an empty folder),
    as Slicer loads a module from Additional module paths or from its qt-scripted-modules folder."""
    run = subprocess.run(
        [sys.executable, "-S", "-E", "-c", _IMPORT_AS_SLICER_DOES, str(module_folder)],
        capture_output=True,
        text=True,
        cwd=cwd,
    )
    assert run.returncode == 0, run.stderr
    return run.stdout.splitlines()


def test_source_checkout_module_folder_finds_the_logic_and_the_library(tmp_path):
    """From a checkout, Slicer puts only <checkout>/DeLightSAM on sys.path (.slicerrc.py runs too late to help):
    DeLightSAM.py adds the checkout, where DeLightSAMSlicerLib and DeLightSAMLib are."""
    assert _import_as_slicer_does(REPO / "DeLightSAM", tmp_path) == [
        str(REPO / "DeLightSAMLib" / "__init__.py"),
        str([str(REPO)]),
    ]


def test_installed_layout_needs_no_path_change_and_a_missing_library_says_what_to_do(tmp_path):
    installed = tmp_path / "qt-scripted-modules"  # what the extension's build installs: the packages side by side
    shutil.copytree(REPO / "DeLightSAMSlicerLib", installed / "DeLightSAMSlicerLib")
    shutil.copytree(REPO / "DeLightSAMLib", installed / "DeLightSAMLib")
    shutil.copy(REPO / "DeLightSAM" / "DeLightSAM.py", installed / "DeLightSAM.py")
    assert _import_as_slicer_does(installed, tmp_path) == [str(installed / "DeLightSAMLib" / "__init__.py"), "[]"]

    alone = tmp_path / "alone" / "qt-scripted-modules"  # the logic without the library anywhere
    shutil.copytree(REPO / "DeLightSAMSlicerLib", alone / "DeLightSAMSlicerLib")
    shutil.copy(REPO / "DeLightSAM" / "DeLightSAM.py", alone / "DeLightSAM.py")
    (output,) = _import_as_slicer_does(alone, tmp_path)
    assert (
        output.startswith("error: De-LightSAM cannot find its library DeLightSAMLib") and "build and install" in output
    )
