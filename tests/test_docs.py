"""The docs cannot rot: every command in a shell block of README.md and docs/*.md names a script, module or make
target that exists, with flags its argument parser accepts and `--set` keys the config accepts; every relative
link and image resolves (anchors included); docs/configs.md names every config key and docs/design.md every file.

Parsers are read in this process, without running any stage: `main([])` of each script is called with
ArgumentParser.parse_known_args replaced by one that hands back the parser it was called on.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import inspect
import re
import shlex
import subprocess
from pathlib import Path

import pytest

from tests.conftest import ROOT
from utils import config_schema as schema
from utils.config import ENV_DEFAULTS, EXPERIMENT_DEFAULTS

DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SHELL_BLOCK = re.compile(r"^```(?:bash|sh|shell)\n(.*?)^```", re.M | re.S)
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
# The blocks a `*_kwargs` key may hold, whichever optimizer, criterion, strategy, backbone or dataset is chosen.
NESTED = {
    "augmentation_kwargs": list(schema.AUGMENTATION_SCHEMAS.values()),
    "transformation_kwargs": [schema.TRANSFORMATION_SCHEMA],
    "optimizer_kwargs": list(schema.OPTIMIZER_SCHEMAS.values()),
    "scheduler_kwargs": list(schema.SCHEDULER_SCHEMAS.values()),
    "criterion_kwargs": list(schema.CRITERION_SCHEMAS.values()),
    "backbone_kwargs": list(schema.BACKBONE_SCHEMAS.values()),
    "model_kwargs": [schema.CONTRASTIVE_MODEL_SCHEMA],
    "dataset_kwargs": [schema.DIGITS_SCHEMA, schema.FOLDER_SCHEMA],
}


def shell_commands(text: str) -> list[list[str]]:
    """Each command of the text's shell blocks as words: continuations joined, comments, `$(...)`, env
    assignments and redirections dropped, pipelines and `&&` chains split."""
    commands = []
    for block in SHELL_BLOCK.findall(text):
        block = re.sub(r"\$\([^)]*\)", "SUBST", block.replace("\\\n", " "))
        for line in block.splitlines():
            line = re.sub(r"(^|\s)#.*", "", line)
            for part in re.split(r"&&|\|\||;|\|", line):
                words = shlex.split(part)
                words = words[: next((i for i, w in enumerate(words) if re.match(r"\d*>", w)), len(words))]
                while words and re.fullmatch(r"[A-Z_]+=\S*", words[0]):
                    words = words[1:]
                if words:
                    commands.append(words)
    return commands


def python_target(words: list[str]) -> tuple[str, list[str]] | None:
    """(module name, its arguments) for `python X.py`, `python -m M`, `torchrun ... X.py`, `srun ... python X.py`."""
    for i, word in enumerate(words):
        if Path(word).name.startswith("python"):
            if words[i + 1] == "-m":
                return words[i + 2], words[i + 3 :]
            return words[i + 1].removesuffix(".py").replace("/", "."), words[i + 2 :]
        if word == "torchrun":
            script = next(j for j in range(i + 1, len(words)) if words[j].endswith(".py"))
            return words[script].removesuffix(".py").replace("/", "."), words[script + 1 :]
    return None


def all_commands() -> list[tuple[str, list[str]]]:
    return [(doc.relative_to(ROOT).as_posix(), words) for doc in DOCS for words in shell_commands(doc.read_text())]


class _Parsed(Exception):
    def __init__(self, parser: argparse.ArgumentParser) -> None:
        self.parser = parser


def accepted_flags(module_name: str, monkeypatch: pytest.MonkeyPatch) -> set[str]:
    """The option strings of the parser that `main` of the module builds; the stage itself never runs."""
    module = importlib.import_module(module_name)
    assert inspect.signature(module.main).parameters, f"{module_name} takes no arguments"

    def hand_back(parser, args=None, namespace=None):
        raise _Parsed(parser)

    with monkeypatch.context() as patch:
        patch.setattr(argparse.ArgumentParser, "parse_known_args", hand_back)
        with pytest.raises(_Parsed) as parsed:
            module.main([])
    return set(parsed.value.parser._option_string_actions)


def valid_key(dotted: str) -> bool:
    first, *rest = dotted.split(".")
    if not rest:
        return first in EXPERIMENT_DEFAULTS or first in ENV_DEFAULTS
    for block in NESTED.get(first, []):
        for part in rest:
            if not isinstance(block, dict) or part not in block:
                break
            block = block[part]
        else:
            return True
    return False


def set_keys(arguments: list[str]) -> list[str]:
    keys, inside = [], False
    for word in arguments:
        if word.startswith("-"):
            inside = word == "--set"
        elif inside:
            assert "=" in word, f"--set {word} is not KEY=VALUE"
            keys.append(word.split("=", 1)[0])
    return keys


def test_the_command_reader_finds_what_a_block_runs():
    text = (
        "```bash\nOMP_NUM_THREADS=1 .venv/bin/python bench/x.py --a 1 \\\n   --set b=2 c.d=3  # note\n"
        "torchrun --nproc_per_node 4 simclr.py --config_exp y.yml > log 2>&1 && make demo WEIGHTS=w.pth\n"
        "srun --nodes 2 python -m tools.new_dataset --name $(hostname | head -1) --root <dir>\n```\n"
        "```\npython not_shell.py\n```\n"
    )
    commands = shell_commands(text)
    assert [python_target(words) for words in commands] == [
        ("bench.x", ["--a", "1", "--set", "b=2", "c.d=3"]),
        ("simclr", ["--config_exp", "y.yml"]),
        None,
        ("tools.new_dataset", ["--name", "SUBST", "--root", "<dir>"]),
    ]
    assert commands[2] == ["make", "demo", "WEIGHTS=w.pth"]
    assert set_keys(["--a", "1", "--set", "b=2", "c.d=3", "--z"]) == ["b", "c.d"]


def test_config_keys_are_checked_at_every_depth():
    assert valid_key("epochs") and valid_key("root_dir") and valid_key("optimizer_kwargs.momentum")
    assert valid_key("augmentation_kwargs.random_resized_crop.size") and valid_key("dataset_kwargs.split_seed")
    assert not valid_key("epoch") and not valid_key("optimizer_kwargs.lrr")
    assert not valid_key("augmentation_kwargs.random_resized_crop.sizes") and not valid_key("seed.x")


def test_every_documented_command_exists_and_takes_the_flags_and_keys_it_is_given(monkeypatch):
    makefile = (ROOT / "Makefile").read_text()
    problems, flags = [], {}
    for doc, words in all_commands():
        if words[0] == "make":
            for target in (w for w in words[1:] if "=" not in w and not w.startswith("-")):
                if not re.search(rf"^{re.escape(target)}:", makefile, re.M):
                    problems.append(f"{doc}: make {target}: no such target")
            continue
        if words[0] == "bash":
            if not (ROOT / words[1]).is_file():
                problems.append(f"{doc}: bash {words[1]}: no such file")
            continue
        target = python_target(words)
        if target is None:
            continue
        module, arguments = target
        if not (ROOT / (module.replace(".", "/") + ".py")).is_file():
            if importlib.util.find_spec(module) is None:  # an installed tool (pytest, pip) may be named too
                problems.append(f"{doc}: {module}: no such script or module")
            continue
        if module not in flags:
            flags[module] = accepted_flags(module, monkeypatch)
        for flag in (w.split("=", 1)[0] for w in arguments if w.startswith("--")):
            if flag not in flags[module]:
                problems.append(f"{doc}: {module} does not accept {flag}")
        problems += [f"{doc}: --set {key}: not a config key" for key in set_keys(arguments) if not valid_key(key)]
    assert len(flags) >= 10, sorted(flags)  # the reader found the commands: entry scripts, tools and benches
    assert not problems, "\n".join(problems)


def github_anchors(markdown: str) -> set[str]:
    """The anchors GitHub gives the headings of a page (outside code blocks), `-1`, `-2` for repeats."""
    anchors: set[str] = set()
    for heading in re.findall(r"^#+ (.+)$", re.sub(r"^```.*?^```", "", markdown, flags=re.M | re.S), re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")
        anchor, n = slug, 0
        while anchor in anchors:
            n += 1
            anchor = f"{slug}-{n}"
        anchors.add(anchor)
    return anchors


def test_every_relative_link_and_image_resolves():
    problems = []
    for doc in DOCS:
        text = re.sub(r"^```.*?^```", "", doc.read_text(), flags=re.M | re.S)
        for target in LINK.findall(text):
            if re.match(r"[a-z]+:", target):
                continue
            path, _, anchor = target.partition("#")
            file = (doc.parent / path).resolve() if path else doc
            if not file.exists():
                problems.append(f"{doc.name}: {target}: no such file")
            elif anchor and file.suffix == ".md" and anchor not in github_anchors(file.read_text()):
                problems.append(f"{doc.name}: {target}: no such heading")
    assert not problems, "\n".join(problems)


def test_the_anchors_are_githubs():
    assert github_anchors("# Bad input → what you see\n## `report.html`\n## A\n## A\n```\n# no\n```\n") == {
        "bad-input--what-you-see",
        "reporthtml",
        "a",
        "a-1",
    }


def test_configs_md_names_every_config_key():
    text = (ROOT / "docs/configs.md").read_text()
    missing = [key for key in [*EXPERIMENT_DEFAULTS, *ENV_DEFAULTS] if f"`{key}`" not in text]
    assert not missing, f"docs/configs.md does not describe {missing}"


def test_the_code_map_names_every_file():
    tracked = subprocess.run(["git", "ls-files", "*.py", "*.sh"], cwd=ROOT, capture_output=True, text=True).stdout
    files = [f for f in tracked.split() if not f.startswith("tests/") and not f.endswith("__init__.py")]
    if not files:
        pytest.skip("not a git checkout")
    text = (ROOT / "docs/design.md").read_text()
    missing = [f for f in files if f"`{Path(f).name}`" not in text and Path(f).name not in text]
    assert not missing, f"docs/design.md does not name {missing}"
