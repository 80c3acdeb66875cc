"""Set values in a YAML file's text while keeping its comments, which PyYAML's round trip would drop.

tools/new_dataset.py writes configs from the commented templates in configs/; the comments are the
documentation a user reads next to each value, so they must survive. Only block-style mappings with scalar or
one-line flow values are handled (what the templates use); the result is always checked by parsing it.
"""

from __future__ import annotations

import copy
import re
from typing import Any

import yaml

INDENT = 3  # the templates indent nested blocks by three spaces


def format_value(value: Any) -> str:
    """A YAML scalar or one-line flow list/mapping for `value`."""
    text = yaml.safe_dump(value, default_flow_style=True, width=10_000, sort_keys=False).strip()
    return text.removesuffix("\n...").strip()


def _content(line: str) -> tuple[int, str] | None:
    """(indentation, text) of a line that holds a key, None for blank and comment lines."""
    stripped = line.lstrip(" ")
    if not stripped.strip() or stripped.startswith("#"):
        return None
    return len(line) - len(stripped), stripped


def _block_end(lines: list[str], start: int, indent: int) -> int:
    """Index after the last line of the block that starts below line `start - 1` with indentation > `indent`."""
    end = start
    for i in range(start, len(lines)):
        content = _content(lines[i])
        if content is None:
            continue
        if content[0] <= indent:
            break
        end = i + 1
    return end


def _set_line(lines: list[str], dotted_key: str, value: Any) -> None:
    keys = dotted_key.split(".")
    start, end, parent_indent = 0, len(lines), -1
    for depth, key in enumerate(keys):
        child_indent, found = None, None
        for i in range(start, end):
            content = _content(lines[i])
            if content is None:
                continue
            indent, text = content
            child_indent = indent if child_indent is None else child_indent
            if indent == child_indent and re.match(rf"{re.escape(key)}\s*:", text):
                found = i
                break
        last = depth == len(keys) - 1
        if found is None:
            if not last:
                raise KeyError(f"{dotted_key}: no '{key}' block in the template")
            indent = child_indent if child_indent is not None else parent_indent + INDENT
            lines.insert(end, f"{' ' * indent}{key}: {format_value(value)}")
            return
        indent = _content(lines[found])[0]
        if last:
            match = re.match(rf"^(\s*{re.escape(key)}\s*:[ \t]*)(.*?)(\s+#.*)?$", lines[found])
            lines[found] = match.group(1) + format_value(value) + (match.group(3) or "")
            return
        start, parent_indent = found + 1, indent
        end = _block_end(lines, start, indent)


def _set_nested(config: dict, dotted_key: str, value: Any) -> None:
    *parents, leaf = dotted_key.split(".")
    for key in parents:
        config = config.setdefault(key, {})
    config[leaf] = value


def set_values(text: str, values: dict[str, Any]) -> str:
    """`text` with each dotted key set to its value (added when missing), comments and layout kept. Raises ValueError
    when the edited text does not parse to the template's content with those values: a template this editor cannot
    handle must fail loudly, never write a config that says something else."""
    lines = text.splitlines()
    expected = copy.deepcopy(yaml.safe_load(text) or {})
    for key, value in values.items():
        _set_line(lines, key, value)
        _set_nested(expected, key, value)
    result = "\n".join(lines) + "\n"
    if yaml.safe_load(result) != expected:
        raise ValueError(f"Editing the YAML text did not give the intended values for {', '.join(values)}.")
    return result
