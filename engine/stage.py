"""What every entry script does before and after its loop: argument parsing, banner, prerequisites, and
turning the user's mistakes into one clear message instead of a traceback."""

from __future__ import annotations

import argparse
import gc
import os
import sys
import time
import warnings
from pathlib import Path

import yaml

from engine.run_record import RunPlan, plan_run
from utils.config import PRETEXT, ConfigError, format_config, load_config
from utils.errors import UserError
from utils.files import check_writable
from utils.runtime import Runtime, from_main, init_runtime, leave_process_group, resolve_fast_path, seed_everything

# Where each setup writes: the folder --fresh moves aside.
STAGE_DIRS = {**dict.fromkeys(PRETEXT, "pretext_dir"), "scan": "scan_dir", "selflabel": "selflabel_dir"}


def setup_stage(
    parser: argparse.ArgumentParser, argv: list[str] | None, expected_setups: tuple[str, ...]
) -> tuple[argparse.Namespace, dict, Runtime, RunPlan]:
    """Parse arguments (`parser`: utils.config.stage_parser), load and check the config, pick the device, seed,
    decide from the run's record whether to train, resume or do nothing (engine/run_record.py), print what will
    run."""
    args = parser.parse_args(argv)
    cfg = load_config(args.config_env, args.config_exp, args.overrides)
    if cfg["setup"] not in expected_setups:
        raise SystemExit(
            f"{args.config_exp} has setup '{cfg['setup']}', but this script runs "
            f"{' / '.join(expected_setups)}: pick a config from the matching configs/ folder."
        )
    runtime = init_runtime()
    resolve_fast_path(cfg, runtime)
    stage_dir = Path(cfg[STAGE_DIRS[cfg["setup"]]])
    plan: RunPlan | Exception | None = None
    if runtime.is_main:
        if args.fresh:
            moved = move_aside(stage_dir)
            print(f"--fresh: moved the previous {stage_dir} to {moved}" if moved else "--fresh: nothing to move aside")
        try:
            plan = plan_run(cfg, args, move_aside)
            if not plan.up_to_date:
                check_writable(stage_dir)  # fail now, not after the first epoch
        except Exception as error:  # every process raises it below, not only the main one
            plan = error
    plan = from_main(plan, runtime)  # rank 0 decides, the others follow
    if isinstance(plan, Exception):
        raise plan
    seed_everything(cfg["seed"], runtime.rank)
    if runtime.is_main and not plan.up_to_date:
        print(format_config(cfg), flush=True)
        print(f"Device: {runtime.device} (world size {runtime.world_size})", flush=True)
    return args, cfg, runtime, plan


def move_aside(folder: Path) -> Path | None:
    """Rename a non-empty `folder` to `<folder>.old-<date>-<time>` (never deleting); None if there is nothing."""
    if not folder.is_dir() or not any(folder.iterdir()):
        return None
    stamp = time.strftime("%Y%m%d-%H%M%S")
    target, n = folder.with_name(f"{folder.name}.old-{stamp}"), 1
    while target.exists():
        target, n = folder.with_name(f"{folder.name}.old-{stamp}-{n}"), n + 1
    folder.rename(target)
    return target


def check_cluster_count(num_classes: int, num_images: int) -> None:
    """More clusters than training images cannot give every cluster a member: stop before training."""
    if num_classes > num_images:
        raise ConfigError(
            f"num_classes is {num_classes}, but the training split has only {num_images} images: "
            f"lower num_classes (the number of clusters) or add images."
        )


CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"
STAGE_SCRIPTS = {"pretext": "simclr.py", "scan": "scan.py", "selflabel": "selflabel.py"}
SETUP_SCRIPTS = {"moco": "moco.py", "pretrained": "pretrained.py"}  # pretext setups with their own script


def stage_command(stage: str, train_db_name: str, config_env: str, backbone: str | None = None) -> str:
    """The command that runs `stage` for this dataset, using the shipped config that trains on it. With `backbone`, a
    config with that backbone is preferred (the digits have a SimCLR and a pretrained pretext)."""
    candidates = []
    for path in sorted((CONFIG_DIR / stage).glob("*.yml")):
        cfg = yaml.safe_load(path.read_text()) or {}
        if cfg.get("train_db_name") == train_db_name:
            candidates.append((backbone is not None and cfg.get("backbone") != backbone, path, cfg))
    if candidates:
        _, path, cfg = min(candidates, key=lambda candidate: candidate[0])
        script = SETUP_SCRIPTS.get(cfg.get("setup"), STAGE_SCRIPTS[stage])
        extra = " --moco_weights <MoCo v2 checkpoint>" if script == "moco.py" else ""
        return f"python {script} --config_env {config_env} --config_exp configs/{stage}/{path.name}{extra}"
    return (
        f"python {STAGE_SCRIPTS[stage]} --config_env {config_env} "
        f"--config_exp <your {stage} config for {train_db_name}>"
    )


def user_message(error: BaseException) -> str:
    """The error's own message; one re-raised from a DataLoader worker loses the worker's traceback."""
    text = str(error)
    marker = "Original Traceback (most recent call last):"
    if marker in text:
        kind = type(error)
        heads = (f"{kind.__module__}.{kind.__qualname__}: ", f"{kind.__name__}: ")
        lines = text.split(marker, 1)[1].splitlines()
        for i, line in enumerate(lines):
            head = next((head for head in heads if line.startswith(head)), None)
            if head is not None:
                return "\n".join([line[len(head) :], *lines[i + 1 :]]).strip()
    return text


def one_line_warning(message, category, filename, lineno, line=None) -> str:
    """`warning: <message>`: what a user needs, without Python's source location and the line of code."""
    return f"warning: {message}\n"


def run_cli(main) -> None:
    """Run an entry script; mistakes in the user's input end with their message, not a traceback. A clean stop (Ctrl-C,
    SIGTERM) exits with 128 + the signal's number after saying how to resume. Warnings print as one `warning: ...`
    line."""
    warnings.formatwarning = one_line_warning
    from utils.guard import TrainingStopped, resume_hint

    stopped_with = None
    try:
        main()
    except TrainingStopped as stop:
        if os.environ.get("RANK", "0") == "0":  # under torchrun every process stops; one says so
            print(stop, file=sys.stderr, flush=True)
        stopped_with = stop.exit_code
    except KeyboardInterrupt:
        print(
            "\nInterrupted at once, without saving; the last checkpoint is kept. " + resume_hint(),
            file=sys.stderr,
            flush=True,
        )
        raise SystemExit(130) from None
    except UserError as error:
        raise SystemExit(f"error: {user_message(error)}") from None
    if stopped_with is not None:
        # Exit outside the `except`: the stop's traceback holds the loop's DataLoader iterator, whose workers ignore
        # SIGTERM; kept alive until interpreter exit, multiprocessing's exit handler waited on them for ever.
        gc.collect()
        raise SystemExit(stopped_with)
    leave_process_group()
