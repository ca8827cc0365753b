"""The repository's layout rules, checked: one definition of each contract name, hardware
files and `elaborate` methods of a readable size, the layers' imports, no reference outside the
repository, and a clear failure when the optional ML stack is missing."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SOURCES = [p for d in ("contract", "sw", "hw", "sim", "app") for p in (ROOT / d).rglob("*.py")]


TREES = {path: ast.parse(path.read_text()) for path in SOURCES}


def definitions(name: str) -> list[str]:
    """Modules that bind `name` at top level (an assignment, function or class)."""
    found = []
    for path, tree in TREES.items():
        for node in tree.body:
            targets = []
            if isinstance(node, ast.Assign):
                for t in node.targets:
                    targets += [e.id for e in ast.walk(t) if isinstance(e, ast.Name)]
            elif isinstance(node, ast.FunctionDef | ast.ClassDef):
                targets = [node.name]
            if name in targets:
                found.append(str(path.relative_to(ROOT)))
    return found


def test_each_contract_name_is_defined_once():
    for name in ("MEMORIES", "ubits", "BIAS_BITS", "MANIFEST_FORMAT", "NETWORK_FORMAT",
                 "NET_FORMAT", "NAME_RE", "ImageError", "TileParams", "needs_flatten"):
        where = [p for p in definitions(name) if not (name == "needs_flatten"
                                                      and p == "sw/chip/netcycles.py")]
        assert where == [definitions(name)[0]] and where[0].startswith("contract/"), \
            (name, definitions(name))
    assert definitions("TileConfig") == []


def test_hardware_files_and_elaborates_stay_small():
    for path in (ROOT / "hw").glob("*.py"):
        lines = len(path.read_text().splitlines())
        assert lines <= 350, f"{path.name}: {lines} lines"
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef) and node.name == "elaborate":
                n = node.end_lineno - node.lineno + 1
                assert n <= 120, f"{path.name}: an elaborate of {n} lines"


SW = r"amaranth|\.\.(hw|sim|app)\b"  # every wing of sw/
RULES = {  # what a folder's modules must not import (docs/architecture.md, "Packages")
    "contract": r"amaranth|torch|numpy|\.\.(sw|hw|sim|app)\b",
    "sw/chip": rf"{SW}|torch|\.\.(ml|studies)\b",  # the NumPy chip: no torch, no training
    "sw/chip/ops": rf"{SW}|torch|\.\.(ml|studies)\b",  # its ops (`epim.sw.chip.ops`)
    "sw/ml": rf"{SW}|\.\.studies\b",  # the torch side: the chip, never the studies
    "sw/studies": SW,  # the studies: anything in sw/
    "sw": SW,
    "hw": r"torch|\.\.(sw|sim|app)\b",
    "sim": r"\.\.app\b",
    "app": None,  # the application: anything below it
}


def test_layers_import_only_downwards():
    """contract <- sw (chip <- ml <- studies), hw <- sim <- app: sw never imports Amaranth, its
    chip wing never torch, nothing in the library the studies, hw never torch, and no library
    imports the application layer."""
    for path in SOURCES:
        layer = str(path.parent.relative_to(ROOT))
        assert layer in RULES, f"{path.relative_to(ROOT)}: a folder without layout rules"
        if RULES[layer] is None:
            continue
        for line in path.read_text().splitlines():
            if re.match(r"\s*(from|import) ", line):
                assert not re.search(rf"(from|import) ({RULES[layer]})", line), \
                    f"{path.relative_to(ROOT)}: {line.strip()}"


def test_the_chip_wing_runs_without_torch():
    """Every module of sw/chip imports with torch blocked (a lazy import would fail here)."""
    code = ("import sys\n"
            "class Block:\n"
            "    def find_spec(self, name, path=None, target=None):\n"
            "        if name.split('.')[0] == 'torch':\n"
            "            raise ModuleNotFoundError(name)\n"
            "sys.meta_path.insert(0, Block())\n"
            "import importlib, pathlib\n"
            f"for p in sorted(pathlib.Path({str(ROOT / 'sw' / 'chip')!r}).glob('*.py')):\n"
            "    importlib.import_module('epim.sw.chip.' + p.stem)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr


def test_nothing_points_outside_the_repository():
    out = subprocess.run(["git", "grep", "-l", "../shared", "--", ".", ":!tests/test_layout.py"],
                         cwd=ROOT, capture_output=True, text=True)
    # the benchmark that reads the shared CIFAR-10 copy takes a path; its default lives here
    assert out.stdout.split() in ([], ["noxfile.py"]), out.stdout


def test_missing_torch_fails_with_the_install_command():
    blocker = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] == 'torch':\n"
        "            raise ModuleNotFoundError(f\"No module named '{name}'\", name=name)\n"
        "sys.meta_path.insert(0, Block())\n"
        "import pytest\n"
        "sys.exit(pytest.main(['-q', '-p', 'no:cacheprovider', '--co',"
        " 'tests/sw/test_layers.py']))\n")
    out = subprocess.run([sys.executable, "-c", blocker], cwd=ROOT, capture_output=True,
                         text=True)
    assert out.returncode != 0
    assert "PyTorch is not installed" in out.stdout and "pip install -e '.[ml]'" in out.stdout


def test_op_names_live_in_the_registry():
    """No library code names an op as a string: it asks the registry (`contract/ops.py`) or
    uses `Op`; only the registry spells them (the network-file parser too reads them through
    `Op`). (`add` and `maxpool` are also unit kinds of `contract/graph.py`, compared as
    `kind`, and `add` a torch method the importer recognises.)"""
    op_string = re.compile(r"\"(conv|linear|add|avgpool_global|maxpool)\"")
    allowed = {"contract/ops.py", "contract/graph.py"}
    for path in SOURCES:
        rel = str(path.relative_to(ROOT))
        if rel in allowed:
            continue
        for n, line in enumerate(path.read_text().splitlines(), 1):
            code = line.split("#")[0]
            if op_string.search(code) and "kind" not in code and "__add__" not in code \
                    and not re.match(r"\s*name: str = \"conv\"", code):
                raise AssertionError(f"{rel}:{n}: an op name as a string: {line.strip()}")


def test_every_package_is_installed():
    """Every source folder with an `__init__.py` is in `pyproject.toml`'s package list (an
    editable install finds a package that a wheel would leave out)."""
    import tomllib

    tool = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    dirs = {v: k for k, v in tool["package-dir"].items()}
    found = set()
    for init in (p for d in dirs for p in (ROOT / d).rglob("__init__.py")):
        rel = init.parent.relative_to(ROOT).parts
        found.add(".".join([dirs[rel[0]], *rel[1:]]))
    assert found == set(tool["packages"]), sorted(found ^ set(tool["packages"]))
