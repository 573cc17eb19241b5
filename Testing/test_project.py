"""Packaging and layering rules that CI can check without Slicer: every script is packaged, every file compiles
and passes pyflakes, each layer imports only what it may."""

from __future__ import annotations

import ast
import json
import re
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
    packaged |= set(_cmake_list(REPO / "DeLightSAM" / "CMakeLists.txt", "DELIGHTSAMLIB_PYTHON_SCRIPTS"))
    on_disk = {str(p.relative_to(REPO)) for p in _python_files(*SLICER_DIRS, "DeLightSAMLib")}
    assert on_disk == packaged


def test_extension_metadata_and_catalog_entry():
    text = (REPO / "CMakeLists.txt").read_text()
    for field in ("EXTENSION_HOMEPAGE", "EXTENSION_CATEGORY", "EXTENSION_CONTRIBUTORS", "EXTENSION_DESCRIPTION",
                  "EXTENSION_ICONURL", "EXTENSION_SCREENSHOTURLS"):
        assert re.search(rf"set\({field} \"[^\"]+\"\)", text), field
    assert 'set(EXTENSION_DEPENDS "PyTorch")' in text and "project(DeLightSAM)" in text and "## NEXT_MODULE" in text
    for folder in SLICER_DIRS:
        assert f"add_subdirectory({folder})" in text
    entry = json.loads((REPO / "DeLightSAM.json").read_text())
    assert entry["build_dependencies"] == ["PyTorch"] and entry["category"] == "Segmentation"
    assert {"scm_url", "scm_revision", "tier"} <= entry.keys()
    assert (REPO / "LICENSE").read_text().lstrip().startswith("Apache License")


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


@pytest.mark.parametrize("name", ["DeLightSAMGeometry.py", "DeLightSAMMRMLLogic.py"])
def test_mrml_logic_imports_no_gui(name):
    imports = _imports(REPO / "DeLightSAM" / name)
    assert not imports & {"qt", "ctk", "SegmentEditorEffects"}
    assert "slicer.ScriptedLoadableModule" not in _imports(REPO / "DeLightSAM" / name, full=True)


def test_no_large_files_in_the_repository():
    tracked = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True).stdout.split()
    big = [name for name in tracked if (REPO / name).is_file() and (REPO / name).stat().st_size > 1_000_000]
    assert big == []
