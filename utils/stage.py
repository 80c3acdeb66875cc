"""What every entry script does before and after its loop: argument parsing, banner, prerequisites."""

from __future__ import annotations

import argparse
from pathlib import Path

import yaml

from utils.config import add_config_arguments, format_config, load_config
from utils.runtime import Runtime, init_runtime, seed_everything


class MissingPrerequisiteError(FileNotFoundError):
    """A stage was started before the stage it builds on has written its files."""


def setup_stage(
    description: str, argv: list[str] | None, expected_setups: tuple[str, ...], extra_arguments=None
) -> tuple[argparse.Namespace, dict, Runtime]:
    """Parse arguments, load and check the config, pick the device, seed, print what will run."""
    parser = argparse.ArgumentParser(description=description)
    add_config_arguments(parser)
    if extra_arguments is not None:
        extra_arguments(parser)
    args = parser.parse_args(argv)
    cfg = load_config(args.config_env, args.config_exp, args.overrides)
    if cfg["setup"] not in expected_setups:
        raise SystemExit(
            f"{args.config_exp} has setup '{cfg['setup']}', but this script runs "
            f"{' / '.join(expected_setups)}: pick a config from the matching configs/ folder."
        )
    runtime = init_runtime()
    seed_everything(cfg["seed"], runtime.rank)
    if runtime.is_main:
        print(format_config(cfg), flush=True)
        print(f"Device: {runtime.device} (world size {runtime.world_size})", flush=True)
    return args, cfg, runtime


CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"
STAGE_SCRIPTS = {"pretext": "simclr.py", "scan": "scan.py", "selflabel": "selflabel.py"}


def stage_command(stage: str, train_db_name: str, config_env: str) -> str:
    """The command that runs `stage` for this dataset, using the shipped config that trains on it."""
    for path in sorted((CONFIG_DIR / stage).glob("*.yml")):
        cfg = yaml.safe_load(path.read_text()) or {}
        if cfg.get("train_db_name") == train_db_name:
            script = "moco.py" if cfg.get("setup") == "moco" else STAGE_SCRIPTS[stage]
            extra = " --moco_weights <MoCo v2 checkpoint>" if script == "moco.py" else ""
            return f"python {script} --config_env {config_env} --config_exp configs/{stage}/{path.name}{extra}"
    return (
        f"python {STAGE_SCRIPTS[stage]} --config_env {config_env} "
        f"--config_exp <your {stage} config for {train_db_name}>"
    )


def require_files(paths: list[str], command: str) -> None:
    """Fail early, naming the missing files and the command that makes them."""
    missing = [path for path in paths if not Path(path).is_file()]
    if missing:
        raise MissingPrerequisiteError(
            "Missing input file(s):\n  " + "\n  ".join(missing) + f"\nThey are written by:\n  {command}"
        )


def run_cli(main) -> None:
    """Run an entry script; mistakes in the user's input end with their message, not a traceback."""
    from data.base import DatasetNotFoundError
    from utils.checkpoint import CheckpointError
    from utils.config import ConfigError

    try:
        main()
    except (ConfigError, DatasetNotFoundError, CheckpointError, MissingPrerequisiteError) as error:
        raise SystemExit(f"error: {error}") from None
