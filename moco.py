"""ImageNet pretext: import MoCo v2 weights, then mine neighbours on the backbone features.

    python moco.py --config_env configs/env.yml --config_exp configs/pretext/moco_imagenet50.yml \
                   --moco_weights moco_v2_800ep_pretrain.pth.tar

pretrained.py's MoCo case: only the weights file, with its own key names, differs.
"""

from __future__ import annotations

from utils.config import stage_parser


def add_arguments(parser) -> None:
    parser.add_argument("--moco_weights", required=True, help="MoCo v2 checkpoint, e.g. moco_v2_800ep_pretrain.pth.tar")


PARSER = stage_parser("Import MoCo v2 weights and mine neighbours", __name__, add_arguments)

from pathlib import Path

from engine.model_files import architecture_record, save_state_dict_file
from engine.pretext import backbone_feature_model, mine_pretext_files
from engine.stage import run_cli, setup_stage
from models import build_model
from utils.checkpoint import CheckpointError, load_checkpoint, load_state_dict_checked

ENCODER, FC = "module.encoder_q.", "module.encoder_q.fc."


def convert_moco_state_dict(state_dict: dict) -> dict:
    """MoCo's query encoder → ContrastiveModel keys: encoder_q.fc.* → contrastive_head.*, the rest → backbone.*. The key
    encoder (encoder_k) and the queue are dropped."""
    converted = {}
    for key, value in state_dict.items():
        if key.startswith(FC):
            converted["contrastive_head." + key[len(FC) :]] = value
        elif key.startswith(ENCODER):
            converted["backbone." + key[len(ENCODER) :]] = value
    if not converted:
        sample = ", ".join(list(state_dict)[:5]) or "none"
        raise CheckpointError(f"This is not a MoCo checkpoint: no key starts with '{ENCODER}' (found e.g. {sample}).")
    return converted


def main(argv: list[str] | None = None) -> dict:
    args, cfg, runtime, plan = setup_stage(PARSER, argv, ("moco",))
    if plan.up_to_date:
        return plan.saved_metrics
    checkpoint = load_checkpoint(
        args.moco_weights,
        "Pass the MoCo v2 checkpoint file with --moco_weights "
        "(moco_v2_800ep_pretrain.pth.tar from the MoCo model zoo).",
    )
    state_dict = checkpoint.get("state_dict", checkpoint) if isinstance(checkpoint, dict) else None
    if not isinstance(state_dict, dict):
        raise CheckpointError(f"{args.moco_weights} holds no state dict.")
    model = build_model(cfg)
    load_state_dict_checked(model, convert_moco_state_dict(state_dict), source=f"MoCo checkpoint {args.moco_weights}")
    if runtime.is_main:
        Path(cfg["pretext_dir"]).mkdir(parents=True, exist_ok=True)
        save_state_dict_file(model.state_dict(), cfg["pretext_model"], architecture_record(cfg), plan.record)
        print(f"Saved the converted pretext model to {cfg['pretext_model']}", flush=True)

    # Neighbours come from the 2048-d backbone features (before the MLP head), L2-normalised by the model;
    # under torchrun every process mines its shard.
    return mine_pretext_files(backbone_feature_model(model), cfg, runtime, extra={"record": plan.record})


if __name__ == "__main__":
    run_cli(main)
