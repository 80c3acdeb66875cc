"""The command line as users of other PyTorch projects type it: hints for their spellings, --help at once."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.conftest import ROOT
from utils.config import ArgumentParser, add_config_arguments, load_config, spelling_hints

EARLY_HELP = ("simclr", "scan", "selflabel", "moco", "pretrained", "eval", "predict", "estimate_k")


def test_spelling_hints_name_the_flag_and_the_set_form():
    parser = ArgumentParser()
    add_config_arguments(parser)
    parser.add_argument("--output_dir")
    parser.add_argument("--fresh", action="store_true")
    options = parser._option_string_actions
    given = ["--config-exp", "x.yml", "--output-dir=out", "epochs=2", "--set", "seed=1", "--outptu_dir", "d"]
    assert spelling_hints(given, options) == [
        "--config-exp: did you mean --config_exp?",
        "--output-dir: did you mean --output_dir?",
        "epochs=2: did you mean --set epochs=2?",
        "--outptu_dir: did you mean --output_dir?",
    ]
    # The values of --set and of other options are no bare overrides; after a flag without a value, one is.
    assert spelling_hints(["--config_exp", "a=b.yml", "--set", "a=1", "b=2"], options) == []
    assert spelling_hints(["--fresh", "lr=0.1"], options) == ["lr=0.1: did you mean --set lr=0.1?"]


def test_a_stage_answers_hyphens_and_bare_overrides_with_the_spelling_it_takes(capsys):
    import eval as eval_script
    import simclr

    with pytest.raises(SystemExit) as stopped:
        simclr.main(["--config_env", "env.yml", "--config-exp", "x.yml", "epochs=2"])
    assert stopped.value.code == 2
    err = capsys.readouterr().err
    assert "--config-exp: did you mean --config_exp?" in err and "epochs=2: did you mean --set epochs=2?" in err
    with pytest.raises(SystemExit):
        eval_script.parse_args(["--config_exp", "x.yml", "--model", "m.pth", "--output-dir", "out"])
    assert "--output-dir: did you mean --output_dir?" in capsys.readouterr().err


def test_pretrained_takes_the_weights_file_as_weights(tmp_path):
    import pretrained

    weights = tmp_path / "my weights: v2.pth"  # a path YAML would misread unquoted
    args = pretrained.PARSER.parse_args(
        ["--config_env", "e.yml", "--config_exp", "c.yml", "--weights", str(weights), "--set", "seed=3"]
    )
    cfg = load_config(None, ROOT / "configs/pretext/pretrained_digits.yml", args.overrides)
    assert cfg["pretrained"] == str(weights) and cfg["seed"] == 3


@pytest.mark.parametrize("script", EARLY_HELP)
def test_help_answers_before_torch_is_imported(script):
    code = (
        "import atexit, runpy, sys; atexit.register(lambda: print('torch loaded:', 'torch' in sys.modules)); "
        f"sys.argv = ['{script}.py', '--help']; runpy.run_path('{script}.py', run_name='__main__')"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and done.stdout.startswith(f"usage: {script}.py")
    assert done.stdout.rstrip().endswith("torch loaded: False")


def test_a_dashed_flag_is_answered_with_its_underscored_spelling():
    import argparse

    from utils.config import spelling_hints

    parser = argparse.ArgumentParser()
    parser.add_argument("--ab_cd")
    parser.add_argument("--abxcd")
    assert spelling_hints(["--ab-cd", "1"], parser._option_string_actions) == ["--ab-cd: did you mean --ab_cd?"]
