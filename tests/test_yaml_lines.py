"""utils/yaml_lines.py: values set in YAML text, comments kept, the result checked by parsing it."""

from __future__ import annotations

import pytest
import yaml

from tests.conftest import ROOT
from utils.yaml_lines import format_value, set_values

TEXT = """\
# header comment
name: old   # CHANGE: the name
block:            # a mapping
   size: 96       # crop size
   inner:
      mean: [0.1, 0.2]
   # a comment inside the block
other: 1
"""


def test_values_are_replaced_and_added_with_their_comments_kept():
    result = set_values(TEXT, {"name": "birds", "block.size": 32, "block.inner.mean": [0.5, 0.25], "block.new": "x"})
    assert result.splitlines() == [
        "# header comment",
        "name: birds   # CHANGE: the name",
        "block:            # a mapping",
        "   size: 32       # crop size",
        "   inner:",
        "      mean: [0.5, 0.25]",
        "   new: x",
        "   # a comment inside the block",
        "other: 1",
    ]
    assert set_values(TEXT, {"added": True}).endswith("other: 1\nadded: true\n")


def test_values_that_need_quotes_are_quoted():
    assert format_value("a: b") == "'a: b'" and format_value("/data/my photos") == "/data/my photos"
    assert yaml.safe_load(set_values(TEXT, {"name": "yes"}))["name"] == "yes"  # not the boolean true
    assert format_value(None) == "null" and format_value(0.1234) == "0.1234"


def test_a_missing_parent_block_is_an_error():
    with pytest.raises(KeyError, match="no 'nothing' block"):
        set_values(TEXT, {"nothing.size": 3})


@pytest.mark.parametrize("template", sorted((ROOT / "configs").glob("*/*_custom.yml")), ids=lambda p: p.name)
def test_every_template_key_can_be_set(template):
    """Setting every leaf of a template to a new value gives exactly that content (checked inside set_values)."""
    config = yaml.safe_load(template.read_text())

    def leaves(node, prefix=""):
        for key, value in node.items():
            if isinstance(value, dict) and value:
                yield from leaves(value, f"{prefix}{key}.")
            else:
                yield f"{prefix}{key}", value

    values = {key: f"changed-{key}" for key, _ in leaves(config)}
    result = yaml.safe_load(set_values(template.read_text(), values))
    assert dict(leaves(result)) == values
