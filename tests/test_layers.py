"""The code's floors (docs/design.md), read from the imports alone: nothing is executed.

From the bottom: utils (plumbing) → data, models, losses → engine (what the stages share) → tools (what a user
runs besides the stages) → the entry scripts and bench/. A module imports only from floors below its own and
from its own package; no entry script imports another; no two modules import each other, even through others.
"""

import ast
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FLOORS = {"utils": 0, "data": 1, "models": 1, "losses": 1, "engine": 2, "tools": 3}
ENTRY_FLOOR = 4
ENTRY_SCRIPTS = sorted(path.stem for path in ROOT.glob("*.py"))


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def product_files() -> list[Path]:
    files = [ROOT / f"{name}.py" for name in ENTRY_SCRIPTS]
    for package in [*FLOORS, "bench"]:
        files += sorted((ROOT / package).glob("*.py"))
    return files


def imported_modules(path: Path) -> list[tuple[int, str]]:
    """(line, module) for every import of the project's own modules, at top level or inside a function."""
    known = set(FLOORS) | set(ENTRY_SCRIPTS)
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            # `from data import folder` imports the module data.folder, `from data.folder import X` the module itself
            names = [f"{node.module}.{alias.name}" for alias in node.names] if node.module in FLOORS else [node.module]
        else:
            continue
        found += [(node.lineno, name) for name in names if name.split(".")[0] in known]
    return found


def floor_of(module: str) -> int:
    return FLOORS.get(module.split(".")[0], ENTRY_FLOOR)


def layer_violations(files: list[Path]) -> list[str]:
    problems = []
    for path in files:
        here = module_name(path)
        package = here.split(".")[0] if "." in here else None
        for line, target in imported_modules(path):
            where = f"{path.relative_to(ROOT)}:{line} imports {target}"
            if package == "bench":
                continue  # bench/ sits on the top floor beside the entry scripts and may use any of them
            if package is None:
                if target.split(".")[0] in ENTRY_SCRIPTS:
                    problems.append(f"{where}: an entry script imports another entry script")
                continue
            if target.split(".")[0] in ENTRY_SCRIPTS:
                problems.append(f"{where}: a package imports an entry script")
            elif target.split(".")[0] != package and floor_of(target) >= floor_of(here):
                problems.append(f"{where}: floor {floor_of(target)} from floor {floor_of(here)} (arrows point down)")
    return problems


def import_cycles(files: list[Path]) -> list[list[str]]:
    """Groups of modules that reach each other through their imports (strongly connected, Tarjan)."""
    names = {module_name(path) for path in files}

    def resolve(target: str) -> str | None:
        while target and target not in names:
            target = target.rpartition(".")[0]
        return target or None

    graph = {module_name(path): set() for path in files}
    for path in files:
        for _, target in imported_modules(path):
            resolved = resolve(target)
            if resolved and resolved != module_name(path) and resolved.split(".")[0] != "__init__":
                graph[module_name(path)].add(resolved)
    index, low, stack, on_stack, cycles = {}, {}, [], set(), []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph[node]:
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                cycles.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return cycles


def test_every_import_points_down_a_floor():
    assert layer_violations(product_files()) == []


def test_no_two_modules_import_each_other():
    assert import_cycles(product_files()) == []


def _write(root: Path, files: dict[str, str]) -> list[Path]:
    paths = []
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        paths.append(path)
    return paths


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("utils/config.py", "from data.base import X\n", "utils/config.py:1 imports data.base: floor 1 from floor 0"),
        ("data/augment.py", "def f():\n    from models import resnet\n", "data/augment.py:2 imports models.resnet"),
        ("engine/knn.py", "import tools.report\n", "engine/knn.py:1 imports tools.report: floor 3 from floor 2"),
        ("data/folder.py", "from eval import main\n", "a package imports an entry script"),
    ],
)
def test_an_upward_import_is_named_with_its_file_and_line(tmp_path, monkeypatch, name, text, message):
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    problems = layer_violations(_write(tmp_path, {name: text}))
    assert len(problems) == 1 and message in problems[0]


def test_an_entry_script_importing_another_and_a_circle_are_found(tmp_path, monkeypatch):
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    monkeypatch.setattr(sys.modules[__name__], "ENTRY_SCRIPTS", ["eval", "predict"])
    paths = _write(
        tmp_path,
        {
            "predict.py": "from eval import default_output_dir\n",
            "eval.py": "import os\n",
            "data/a.py": "from data.b import x\n",
            "data/b.py": "from data import c\n",
            "data/c.py": "import data.a\n",
        },
    )
    assert layer_violations(paths) == ["predict.py:1 imports eval: an entry script imports another entry script"]
    assert import_cycles(paths) == [["data.a", "data.b", "data.c"]]
