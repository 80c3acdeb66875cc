"""Mutation testing of the modules where a silent bug costs a training run.

    python bench/mutation_test.py [--modules losses/losses.py ...] [--output bench/MUTATION.md]

Each mutant changes one thing in one module (a comparison, an arithmetic operator, a constant, a
boolean, a dropped `.float()` / `.detach()` call, a dropped statement such as `optimizer.step()`),
then runs the tests that cover that module; a mutant is *killed* when a test fails or hangs. The
fast tests run first and the slow end-to-end tests only for the mutants they let through.

Why a script of our own instead of mutmut: the suite imports torch in every run (seconds), so each
mutant runs in a process forked from one that already imported the third-party libraries, and only
the project's modules are imported fresh from a mutated copy of the tree. That makes a mutant cost
about a second instead of five.

Writes a markdown report (score per module, every surviving mutant with its line) and a JSON file.
"""

from __future__ import annotations

import argparse
import ast
import copy
import json
import os
import shutil
import signal
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# Module → (fast tests, slow tests that also cover it). Paths relative to the repository root. test_guard.py sits
# with the slow ones: its signal tests do not pass in a child forked from this script, only in their own process.
TARGETS: dict[str, tuple[list[str], list[str]]] = {
    "losses/losses.py": (["tests/test_losses.py", "tests/test_imbalance.py", "tests/test_stages.py"], []),
    "data/augment.py": (["tests/test_augment.py"], []),
    "data/wrappers.py": (["tests/test_knn_and_wrappers.py"], ["tests/test_stage_behaviour.py"]),
    "utils/checkpoint.py": (
        ["tests/test_checkpoint.py", "tests/test_stages.py"],
        ["tests/test_guard.py", "tests/test_resume.py", "tests/test_eval.py"],
    ),
    "engine/evaluate.py": (["tests/test_evaluate.py"], ["tests/test_stage_behaviour.py", "tests/test_eval.py"]),
    "simclr.py": (
        ["tests/test_stages.py"],
        ["tests/test_stage_behaviour.py", "tests/test_resume.py"],
    ),
    "scan.py": (
        ["tests/test_stages.py"],
        ["tests/test_stage_behaviour.py", "tests/test_resume.py"],
    ),
    "selflabel.py": (["tests/test_stages.py"], ["tests/test_stage_behaviour.py", "tests/test_resume.py"]),
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
    status: str = "pending"  # killed | survived | timeout | broken


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


def run_tests_forked(workdir: Path, tests: list[str], timeout: float) -> str:
    """'killed' if the tests fail, 'survived' if they pass, 'timeout' if they hang; in a forked child."""
    pid = os.fork()
    if pid == 0:  # child: import the project fresh from the mutated copy
        os.chdir(workdir)
        sys.path.insert(0, str(workdir))
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 1)
        os.dup2(devnull, 2)
        import pytest

        code = pytest.main([*tests, "-x", "-q", "-p", "no:cacheprovider", "-p", "no:randomly", "-W", "ignore"])
        os._exit(int(code))
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


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description="Mutation testing of the modules that matter")
    parser.add_argument("--modules", nargs="+", default=list(TARGETS), choices=list(TARGETS))
    parser.add_argument("--output", default=str(ROOT / "bench/MUTATION.md"))
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds per mutant before it counts as killed")
    parser.add_argument("--skip_slow", action="store_true", help="only the fast tests (quicker, lower score)")
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

    workdir = Path(tempfile.mkdtemp(prefix="mutants_"))
    shutil.copytree(ROOT, workdir, dirs_exist_ok=True, ignore=shutil.ignore_patterns(".venv", ".git", "results"))
    baseline_tests = sorted({t for m in args.modules for t in TARGETS[m][0]})
    baseline = run_tests_forked(workdir, baseline_tests, 10 * args.timeout)  # every module's tests at once
    if baseline != "survived":
        raise SystemExit(f"The unmutated tree does not pass {' '.join(baseline_tests)} ({baseline}); fix that first.")

    mutants: list[Mutant] = []
    started = time.perf_counter()
    for module in args.modules:
        fast, slow = TARGETS[module]
        path = workdir / module
        original = path.read_text()
        candidates = enumerate_mutations(ast.parse(original))
        print(f"{module}: {len(candidates)} mutants", flush=True)
        for index, line, description, apply in candidates:
            mutant = Mutant(module, line, description)
            try:
                path.write_text(mutate_source(original, index, apply))
            except (AttributeError, TypeError, ValueError, SyntaxError):
                mutant.status = "broken"
            if mutant.status != "broken":
                mutant.status = run_tests_forked(workdir, fast, args.timeout)
                if mutant.status == "survived" and slow and not args.skip_slow:
                    mutant.status = run_tests_forked(workdir, slow, args.timeout)
            path.write_text(original)
            mutants.append(mutant)
            print(f"  {module}:{line} {description}: {mutant.status}", flush=True)
    shutil.rmtree(workdir, ignore_errors=True)

    report = summarize(mutants, time.perf_counter() - started, " ".join(sys.argv))
    Path(args.output).write_text(report["markdown"])
    Path(args.output).with_suffix(".json").write_text(json.dumps([asdict(m) for m in mutants], indent=1))
    print(report["markdown"], flush=True)
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
    lines += [f"| {m.module}:{m.line} | {m.description} |" for m in mutants if m.status == "survived"]
    return {"markdown": "\n".join(lines) + "\n", "killed": killed, "total": len(ran)}


if __name__ == "__main__":
    main()
