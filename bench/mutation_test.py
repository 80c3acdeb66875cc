"""Mutation testing of every module of the project (bench/MUTATION.md).

    python bench/mutation_test.py [--modules losses/losses.py ...] [--skip_slow] [--sample N] [--output PATH]
    python bench/mutation_test.py --rerun PATH.json [--skip_slow]   # the survivors of an earlier run again

Each mutant changes one thing in one module (a comparison, an arithmetic operator, a constant, a
boolean, a dropped `.float()` / `.detach()` call, a dropped statement such as `optimizer.step()`),
then runs the fast tests that execute the mutated line (recorded with sys.settrace in the baseline
run; a module-level line runs its module's tests; a line no fast test executes counts as surviving);
a mutant is *killed* when a test fails or hangs. Without --skip_slow, a fast survivor then runs the
slow tests of the files that import or name its module: the fast tier and the whole suite.

Why a script of our own instead of mutmut: the suite imports torch in every run (seconds), so each
mutant runs in a process forked from one that already imported the third-party libraries, and only
the project's modules are imported fresh from a mutated copy of the tree. That makes a mutant cost
about a second instead of five.

Writes a markdown report (score per module, every surviving mutant with its line) and a JSON file,
after every module, so that a stopped run keeps what it measured.
"""

from __future__ import annotations

import argparse
import ast
import copy
import json
import os
import re
import shutil
import signal
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# The packages and entry scripts whose modules are mutated (bench/ and tests/ are not).
PACKAGES = ["utils", "data", "models", "losses", "engine", "tools"]
# Test files whose slow tests cannot run in a child forked from this script: test_guard.py's signal tests pass only
# in their own process. Its fast tests do, and run; its slow ones are left out of the slow tier (a failure there
# would count as a kill of every mutant).
UNFORKABLE = {"tests/test_guard.py"}


def product_modules() -> list[str]:
    """Every module of the packages and every entry script, as paths relative to the repository root."""
    modules = sorted(p.name for p in ROOT.glob("*.py"))
    for package in PACKAGES:
        modules += sorted(f"{package}/{p.name}" for p in (ROOT / package).glob("*.py") if p.name != "__init__.py")
    return modules


def _imports(path: Path, known: set[str]) -> set[str]:
    """The project modules (as relative paths) that one file imports, at top level or inside a function."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        else:
            continue
        for name in names:
            for candidate in (name.replace(".", "/") + ".py", name.replace(".", "/") + "/__init__.py"):
                if candidate in known:
                    found.add(candidate)
    return found


def covering_tests(direct: bool = False) -> dict[str, list[str]]:
    """Module → test files that reach it, nearest first.

    A test file reaches a module when it imports it, directly or through other project modules (a package's
    `__init__.py` counts as importing what it imports), or names it (`"simclr.py"` run in a subprocess). Nearest
    first: direct importers run before the rest, so with `-x` a mutant is usually killed by the first file.
    """
    known = set(product_modules()) | {f"{p}/__init__.py" for p in PACKAGES}
    graph = {module: _imports(ROOT / module, known) for module in known}
    tests = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "tests").glob("test_*.py"))
    reach: dict[str, dict[str, int]] = {}
    for test in tests:
        text = (ROOT / test).read_text()
        distance = {m: 0 for m in _imports(ROOT / test, known)}
        distance.update({m: 0 for m in known if "/" not in m and re.search(rf"\b{re.escape(m)}\b", text)})
        frontier = list(distance)
        while frontier:
            module = frontier.pop(0)
            for target in graph.get(module, ()):
                if target not in distance:
                    distance[target] = distance[module] + 1
                    frontier.append(target)
        reach[test] = distance
    return {
        module: sorted(
            (t for t in tests if module in reach[t] and (not direct or reach[t][module] == 0)),
            key=lambda t: reach[t][module],
        )
        for module in product_modules()
    }


COMPARISON_SWAPS = {ast.Lt: ast.LtE, ast.LtE: ast.Lt, ast.Gt: ast.GtE, ast.GtE: ast.Gt, ast.Eq: ast.NotEq,
                    ast.NotEq: ast.Eq, ast.In: ast.NotIn, ast.NotIn: ast.In}  # fmt: skip
ARITHMETIC_SWAPS = {ast.Add: ast.Sub, ast.Sub: ast.Add, ast.Mult: ast.Div, ast.Div: ast.Mult, ast.FloorDiv: ast.Mult,
                    ast.Pow: ast.Mult, ast.MatMult: ast.Mult}  # fmt: skip
DROPPABLE_CALLS = {"float", "detach", "clone", "clamp", "mean", "eval", "train", "contiguous"}
DROPPABLE_STATEMENTS = {"step", "zero_grad", "backward", "update", "set_epoch", "load_state_dict", "copy_",
                        "manual_seed", "seed", "shuffle", "fill_", "mul_", "add_", "flush", "fsync"}  # fmt: skip


@dataclass
class Mutant:
    module: str
    line: int
    description: str
    index: int = -1  # the mutated node's position in ast.walk order, to apply the same mutant again (--rerun)
    status: str = "pending"  # killed | survived | timeout | broken
    tier: str = ""  # the tier that decided it: fast (`-m "not slow"`) or slow (`-m slow`, only for fast survivors)
    tests: str = ""  # what ran in the fast tier: the tests that execute the mutated line, or the module's test files


def _call_name(node: ast.AST) -> str | None:
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
        return node.func.attr
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
        return node.func.id
    return None


def _in_docstring_or_message(node: ast.AST, parents: dict) -> bool:
    """Strings are never mutated; numbers inside f-strings and raise/print/warn calls only change messages."""
    parent = parents.get(node)
    while parent is not None:
        if isinstance(parent, (ast.JoinedStr, ast.Raise)):
            return True
        if _call_name(parent) in {"print", "warn", "write", "set_postfix", "tqdm"}:
            return True
        parent = parents.get(parent)
    return False


def enumerate_mutations(tree: ast.Module) -> list[tuple[int, str, callable]]:
    """Every (node id, description, apply) for the tree; `apply` mutates a deep copy's matching node in place."""
    parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
    mutations = []
    for index, node in enumerate(ast.walk(tree)):
        if _in_docstring_or_message(node, parents):
            continue
        line = getattr(node, "lineno", 0)
        if isinstance(node, ast.Compare):
            for position, op in enumerate(node.ops):
                if type(op) in COMPARISON_SWAPS:
                    new = COMPARISON_SWAPS[type(op)]

                    def apply(n, position=position, new=new):
                        n.ops[position] = new()

                    mutations.append((index, line, f"{type(op).__name__} -> {new.__name__}", apply))
        elif isinstance(node, ast.BinOp) and type(node.op) in ARITHMETIC_SWAPS:
            new = ARITHMETIC_SWAPS[type(node.op)]

            def apply(n, new=new):
                n.op = new()

            mutations.append((index, line, f"{type(node.op).__name__} -> {new.__name__}", apply))
        elif isinstance(node, ast.BoolOp):
            new = ast.Or if isinstance(node.op, ast.And) else ast.And

            def apply(n, new=new):
                n.op = new()

            mutations.append((index, line, f"{type(node.op).__name__} -> {new.__name__}", apply))
        elif isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.Not, ast.USub)):

            def apply(n):
                n.op = ast.UAdd()  # `-x` -> `+x`; `not x` -> `+x`, which has the truthiness of x

            mutations.append((index, line, f"drop unary {type(node.op).__name__}", apply))
        elif isinstance(node, ast.Constant) and type(node.value) in (int, float) and not isinstance(node.value, bool):

            def apply(n):
                n.value = n.value + 1 if isinstance(n.value, int) else n.value * 1.5 + 0.1

            mutations.append((index, line, f"constant {node.value!r} changed", apply))
        elif isinstance(node, ast.Constant) and isinstance(node.value, bool):

            def apply(n):
                n.value = not n.value

            mutations.append((index, line, f"{node.value} -> {not node.value}", apply))
        elif _call_name(node) in DROPPABLE_CALLS and isinstance(node.func, ast.Attribute) and not node.args:
            mutations.append((index, line, f"drop .{node.func.attr}()", "unwrap_call"))
        elif isinstance(node, ast.Expr) and _call_name(node.value) in DROPPABLE_STATEMENTS:
            mutations.append((index, line, f"drop statement {_call_name(node.value)}(...)", "pass_statement"))
    return mutations


def mutate_source(source: str, target_index: int, apply) -> str:
    """The module's source with one mutation applied (compiled from the AST, so comments are gone)."""
    tree = ast.parse(source)
    mutated = copy.deepcopy(tree)
    node = list(ast.walk(mutated))[target_index]
    if apply == "unwrap_call":
        receiver = node.func.value
        for parent in ast.walk(mutated):
            for field, value in ast.iter_fields(parent):
                if value is node:
                    setattr(parent, field, receiver)
                elif isinstance(value, list):
                    parent.__dict__[field] = [receiver if item is node else item for item in value]
    elif apply == "pass_statement":
        node.value = ast.Constant(value=None)
    else:
        apply(node)
    return ast.unparse(ast.fix_missing_locations(mutated))


def _record_lines_plugin(workdir: Path, modules: list[str], lines: dict[str, set[str]]):
    """A pytest plugin that adds, for every test, its node id to `lines["module:line"]` for each project line the
    test executes (setup and teardown included), with sys.settrace in this process and the threads it starts."""
    import threading

    import pytest

    files = {str(workdir / module): module for module in modules}
    current: set[tuple[str, int]] = set()

    def local(frame, event, arg):
        if event == "line":
            current.add((files[frame.f_code.co_filename], frame.f_lineno))
        return local

    def call(frame, event, arg):
        module = files.get(frame.f_code.co_filename)
        if module is None:
            return None
        current.add((module, frame.f_lineno))
        return local

    class RecordLines:
        @pytest.hookimpl(hookwrapper=True)
        def pytest_runtest_protocol(self, item, nextitem):
            current.clear()
            sys.settrace(call)
            threading.settrace(call)
            yield
            sys.settrace(None)
            threading.settrace(None)
            for module, line in current:
                lines.setdefault(f"{module}:{line}", set()).add(item.nodeid)

    return RecordLines()


def run_tests_forked(
    workdir: Path, tests: list[str], timeout: float, marker: str = "not slow", record: Path | None = None
) -> str:
    """'killed' if the tests fail, 'survived' if they pass, 'timeout' if they hang; in a forked child.

    With `record`, every test runs (no -x) and the child writes {"module:line": [node ids]} there as JSON.
    """
    pid = os.fork()
    if pid == 0:  # child: import the project fresh from the mutated copy
        os.chdir(workdir)
        sys.path.insert(0, str(workdir))
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 1)
        os.dup2(devnull, 2)
        import pytest

        args = [*tests, "-q", "-m", marker, "-p", "no:cacheprovider", "-p", "no:randomly", "-W", "ignore"]
        lines: dict[str, set[str]] = {}
        plugins = [] if record is None else [_record_lines_plugin(workdir, product_modules(), lines)]
        code = pytest.main(args if record is not None else ["-x", *args], plugins=plugins)
        if record is not None:
            record.write_text(json.dumps({key: sorted(ids) for key, ids in lines.items()}))
        os._exit(0 if code == pytest.ExitCode.NO_TESTS_COLLECTED else int(code))
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            code = os.waitstatus_to_exitcode(status)
            return "survived" if code == 0 else "killed"
        time.sleep(0.05)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    return "timeout"


def function_body_lines(tree: ast.Module) -> set[int]:
    """Lines inside a function body (run when the function is called, not at import)."""
    lines = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            body = node.body if isinstance(node.body, list) else [node.body]
            lines.update(range(body[0].lineno, node.end_lineno + 1))
    return lines


def sample_evenly(candidates: list, limit: int | None) -> list:
    """At most `limit` of the candidates, spread evenly over the module (first, last and equal steps between)."""
    if limit is None or len(candidates) <= limit:
        return candidates
    if limit == 1:
        return candidates[:1]
    return [candidates[round(i * (len(candidates) - 1) / (limit - 1))] for i in range(limit)]


def main(argv: list[str] | None = None) -> dict:
    modules = product_modules()
    parser = argparse.ArgumentParser(description="Mutation testing of every module of the project")
    parser.add_argument("--modules", nargs="+", default=modules, choices=modules)
    parser.add_argument("--output", default=str(ROOT / "bench/MUTATION.md"))
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds per mutant before it counts as killed")
    parser.add_argument("--skip_slow", action="store_true", help="only the fast tier (`-m 'not slow'`)")
    parser.add_argument("--sample", type=int, default=None, help="at most this many mutants a module, evenly spread")
    parser.add_argument(
        "--rerun", default=None, help="a previous run's JSON: run again only the mutants it let survive"
    )
    parser.add_argument(
        "--select",
        choices=["lines", "files"],
        default="lines",
        help="lines: each mutant runs the fast tests that execute its line (recorded in the baseline run), or its "
        "module's test files when no test does; files: always the test files that import the module",
    )
    parser.add_argument(
        "--slow_files",
        choices=["direct", "all"],
        default="direct",
        help="the slow tier (for fast survivors) runs the slow tests of the files that import or name the module "
        "(direct), or of every file that reaches it through other modules (all: far slower)",
    )
    parser.add_argument(
        "--lines",
        default=None,
        help="reuse the line record of an earlier run of the same tree (a run without --lines writes its record "
        "beside --output as .lines.json; `--sample 0` over every module records the lines and runs no mutant)",
    )
    args = parser.parse_args(argv)

    # Pre-import the heavy third-party libraries once; forked children inherit them.
    import faiss  # noqa: F401
    import matplotlib

    matplotlib.use("Agg")
    import pytest  # noqa: F401
    import scipy.optimize  # noqa: F401
    import sklearn.metrics  # noqa: F401
    import torch  # noqa: F401
    import torchvision  # noqa: F401

    tests_of = covering_tests()
    slow_tests_of = covering_tests(direct=args.slow_files == "direct")
    previous = json.loads(Path(args.rerun).read_text()) if args.rerun else None
    if previous is not None:
        args.modules = [
            m for m in args.modules if any(p["module"] == m and p["status"] == "survived" for p in previous)
        ]
    workdir = Path(tempfile.mkdtemp(prefix="mutants_"))
    shutil.copytree(ROOT, workdir, dirs_exist_ok=True, ignore=shutil.ignore_patterns(".venv", ".git", "results"))
    baseline_tests = sorted({t for m in args.modules for t in tests_of[m]})
    record = workdir / "lines.json" if args.select == "lines" and args.lines is None else None
    baseline = "survived"  # an earlier record of the same tree's lines comes from a baseline that passed
    if args.lines is None:
        baseline = run_tests_forked(workdir, baseline_tests, 10 * args.timeout, record=record)  # all at once
    if args.lines is None and record is not None and record.exists():  # kept beside the report, for --lines
        shutil.copy(record, Path(args.output).with_suffix(".lines.json"))
    record = Path(args.lines) if args.lines is not None else record
    if baseline != "survived":
        raise SystemExit(f"The unmutated tree does not pass {' '.join(baseline_tests)} ({baseline}); fix that first.")
    tests_at = json.loads(record.read_text()) if record is not None else {}
    print(f"baseline passed; {len(tests_at)} project lines executed by the fast tests", flush=True)

    mutants: list[Mutant] = []
    started = time.perf_counter()
    for module in args.modules:
        tests = tests_of[module]
        path = workdir / module
        original = path.read_text()
        candidates = enumerate_mutations(ast.parse(original))
        if previous is not None:
            wanted = {
                (p["index"], p["description"]) for p in previous if p["module"] == module and p["status"] == "survived"
            }
            candidates = [c for c in candidates if (c[0], c[2]) in wanted]
        else:
            candidates = sample_evenly(candidates, args.sample)
        print(f"{module}: {len(candidates)} mutants, {len(tests)} test files", flush=True)
        in_functions = function_body_lines(ast.parse(original))
        # A module-level line (a constant, a default argument) runs at import: it reaches the tests that import
        # the module directly and those that execute any of its lines.
        module_tests = sorted(
            {t for key, ids in tests_at.items() if key.rpartition(":")[0] == module for t in ids}
            | {t for t in tests if module in _imports(ROOT / t, set(product_modules()))}
        )
        for index, line, description, apply in candidates:
            mutant = Mutant(module, line, description, index)
            if not tests_at:
                chosen, mutant.tests = tests, f"{len(tests)} test files"
            elif f"{module}:{line}" in tests_at:
                chosen = tests_at[f"{module}:{line}"]
                mutant.tests = f"{len(chosen)} tests on its line"
            elif line in in_functions:
                chosen, mutant.tests = [], "no fast test executes its line"
            else:
                chosen, mutant.tests = module_tests, f"{len(module_tests)} tests of its module"
            try:
                path.write_text(mutate_source(original, index, apply))
            except (AttributeError, TypeError, ValueError, SyntaxError):
                mutant.status = "broken"
            if mutant.status != "broken":
                ran = run_tests_forked(workdir, chosen, args.timeout) if chosen else "survived"
                mutant.status, mutant.tier = ran, "fast"
                if mutant.status == "survived" and not args.skip_slow:
                    slow = [t for t in slow_tests_of[module] if t not in UNFORKABLE]
                    # No file: it stays a survivor (an empty list would make pytest run every slow test).
                    ran = run_tests_forked(workdir, slow, args.timeout, marker="slow") if slow else "survived"
                    mutant.status, mutant.tier = ran, "slow"
            path.write_text(original)
            mutants.append(mutant)
            print(f"  {module}:{line} {description}: {mutant.status} ({mutant.tier}, {mutant.tests})", flush=True)
        report = write_report(mutants, time.perf_counter() - started, args.output)  # after each module: a stopped
    shutil.rmtree(workdir, ignore_errors=True)  # run keeps what it measured
    print(report["markdown"], flush=True)
    return report


def write_report(mutants: list[Mutant], seconds: float, output: str) -> dict:
    """The markdown report at `output` and every mutant in the JSON file beside it (for --rerun)."""
    report = summarize(mutants, seconds, " ".join(sys.argv))
    Path(output).write_text(report["markdown"])
    Path(output).with_suffix(".json").write_text(json.dumps([asdict(m) for m in mutants], indent=1))
    return report


def summarize(mutants: list[Mutant], seconds: float, command: str) -> dict:
    lines = [
        "# Mutation testing",
        "",
        f"Command: `{command}` ({seconds / 60:.0f} min). A mutant is killed when a test fails or hangs.",
        "",
        "| module | mutants | killed | survived | score |",
        "|---|---|---|---|---|",
    ]
    for module in dict.fromkeys(m.module for m in mutants):
        ran = [m for m in mutants if m.module == module and m.status != "broken"]
        killed = sum(m.status in ("killed", "timeout") for m in ran)
        lines.append(f"| {module} | {len(ran)} | {killed} | {len(ran) - killed} | {killed / max(len(ran), 1):.0%} |")
    ran = [m for m in mutants if m.status != "broken"]
    killed = sum(m.status in ("killed", "timeout") for m in ran)
    lines += [f"| **all** | {len(ran)} | {killed} | {len(ran) - killed} | **{killed / max(len(ran), 1):.0%}** |", ""]
    lines += ["## Surviving mutants", "", "| module:line | mutation |", "|---|---|"]
    lines += [f"| {m.module}:{m.line} | {m.description} ({m.tests}) |" for m in mutants if m.status == "survived"]
    return {"markdown": "\n".join(lines) + "\n", "killed": killed, "total": len(ran)}


if __name__ == "__main__":
    main()
