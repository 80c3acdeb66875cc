"""Pretext from any pretrained torchvision or timm image model: no training, only neighbour mining.

    python pretrained.py --config_env configs/env.yml --config_exp configs/pretext/pretrained_digits.yml \
                         [--set backbone=timm:vit_small_patch14_dinov2.lvd142m --weights /path/model.safetensors]

`backbone: torchvision:<name>` or `timm:<name>` names the model; `pretrained:` (or --weights) is a weights file,
or `default` for the library's own. Images go through the model's own preprocessing unless the config sets
`transformation_kwargs`; neighbours are mined on the L2-normalised backbone features as after SimCLR
(docs/pretrained.md). Writes <root_dir>/<db>/pretext/ as simclr.py does.
"""

from __future__ import annotations

import argparse
import json

from utils.config import stage_parser


class WeightsOption(argparse.Action):
    """`--weights PATH`, as tools/new_dataset.py and moco.py take a weights file: sets the config's `pretrained`."""

    def __call__(self, parser, namespace, value, option_string=None) -> None:
        namespace.overrides = [*namespace.overrides, f"pretrained={json.dumps(value)}"]  # quoted: any path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    help = "weights file of the backbone, or `default` (the library's own); same as --set pretrained=PATH"
    parser.add_argument("--weights", metavar="PATH", action=WeightsOption, help=help)


PARSER = stage_parser("Pretext from a pretrained torchvision/timm backbone", __name__, add_arguments)

from pathlib import Path

from engine.model_files import architecture_record, save_state_dict_file
from engine.pretext import mine_pretext_files
from engine.stage import run_cli, setup_stage
from models import build_model
from models.library import load_pretrained_weights
from utils.config import ConfigError
from utils.library_names import is_library_backbone
from utils.runtime import barrier


def main(argv: list[str] | None = None) -> dict:
    args, cfg, runtime, plan = setup_stage(PARSER, argv, ("pretrained",))
    if plan.up_to_date:
        return plan.saved_metrics
    if not is_library_backbone(cfg["backbone"]):
        raise ConfigError(
            f"pretrained.py imports library models: set backbone to torchvision:<name> or timm:<name>, not "
            f"'{cfg['backbone']}' (simclr.py trains resnet18/resnet50 from scratch; moco.py imports MoCo v2)."
        )
    model = build_model(cfg)  # the backbone without classifier, no projection head
    if not runtime.is_main:  # under torchrun the main process fetches `default` weights into the cache first
        barrier(runtime)
    source = load_pretrained_weights(model.backbone, cfg["backbone"], cfg["pretrained"])
    if runtime.is_main:
        barrier(runtime)
        print(f"Loaded {cfg['backbone']} ({model.backbone.out_dim}-d features) from {source}", flush=True)
        Path(cfg["pretext_dir"]).mkdir(parents=True, exist_ok=True)
        save_state_dict_file(model.state_dict(), cfg["pretext_model"], architecture_record(cfg), plan.record)
        print(f"Saved the pretext model to {cfg['pretext_model']}", flush=True)
    # Every process mines its shard.
    return mine_pretext_files(
        model, cfg, runtime, extra={"backbone": cfg["backbone"], "weights": source, "record": plan.record}
    )


if __name__ == "__main__":
    run_cli(main)
