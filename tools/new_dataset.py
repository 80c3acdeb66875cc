"""A folder of your own images → the three stage configs and the commands that train on it, in one command.

    python -m tools.new_dataset --name birds --images datasets/birds --num_classes 10|auto [--image_size S]
                                [--pretrained torchvision:resnet50 [--weights PATH]] [--quick]

It checks the folder (data/folder.py), saves the split, picks the input size and ResNet-18 stem (up to 64 px
median shorter side: the images' size and the `cifar` stem; larger: 96 px and the `stl` stem, the paper's two
settings; with --pretrained the model's own preprocessing), computes the mean/std, writes
configs/{pretext,scan,selflabel}/<stage>_<name>.yml from the commented *_custom.yml templates, paths as given, and
prints every command of the path (docs/own-data.md), estimate_k.py's included with `--num_classes auto`.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path

from PIL import Image
from torchvision import transforms

from data.folder import IMAGE_EXTENSIONS, find_images, folder_error
from data.library_preprocessing import library_preprocessing
from data.registry import BUILTIN, get_train_dataset, get_val_dataset
from engine.stage import run_cli
from models.library import build_library_backbone
from tools.dataset_stats import channel_stats
from utils.config import ConfigError, load_config
from utils.library_names import is_library_backbone
from utils.yaml_lines import set_values

ROOT = Path(__file__).resolve().parents[1]
SMALL_IMAGES = 64  # up to this median shorter side, images keep their size (cifar stem)
STL_SIZE = 96  # the stl stem's input size
SIZE_SAMPLE = 200  # images whose size is read to pick the input size
QUICK = {"epochs": 1, "backbone_kwargs.base_width": 8, "batch_size": 32, "num_workers": 0}
QUICK_PRETRAINED = {"batch_size": 32, "num_workers": 0}  # the pretrained model keeps its size; epochs: below
CANDIDATE_K = (2, 3, 4, 5, 6, 8, 10, 12, 15, 20)  # --num_classes auto: those with at least 5 images a cluster


@dataclass(frozen=True)
class Geometry:
    """Input size, crops and stem for a dataset, and why."""

    image_size: int  # shorter side as the images are read
    stem: str | None  # None for a pretrained model (it has its own)
    cutout: int
    reason: str
    crop_size: int | None = None  # None: image_size
    normalize: dict | None = None  # {mean, std} of a pretrained model; None: computed from the images

    @property
    def crop(self) -> int:
        return self.crop_size or self.image_size


def choose_geometry(median_side: int | None, image_size: int | None = None) -> Geometry:
    """The input size (shorter side = crop size), stem and Cutout length for images of `median_side` px."""
    if image_size is None:
        if median_side is not None and median_side <= SMALL_IMAGES:
            image_size, why = median_side, f"the images are small (median shorter side {median_side} px <= 64)"
        else:
            image_size, why = STL_SIZE, f"the images are large (median shorter side {median_side} px > 64)"
    else:
        why = f"--image_size {image_size}"
    if image_size == STL_SIZE:
        why += ": read at 96 px with STL-10's network (stem stl), the paper's setting for 96x96 images"
        return Geometry(image_size, "stl", 32, why)
    # CIFAR's Cutout is half of its 32 px crops; STL-10's a third of 96: half for small crops, a third above.
    cutout = image_size // 2 if image_size <= SMALL_IMAGES else image_size // 3
    cost = (image_size / STL_SIZE) ** 2
    note = "" if image_size <= SMALL_IMAGES else f" (compute per epoch: about {cost:.1f}x that of 96 px)"
    why += f": read at {image_size} px with CIFAR's network (stem cifar, no early pooling){note}"
    return Geometry(image_size, "cifar", cutout, why)


def pretrained_geometry(backbone: str) -> Geometry:
    """Size, crop and mean/std of a torchvision/timm model's own preprocessing (its library's metadata)."""
    spec = library_preprocessing(backbone)
    reason = f"the preprocessing of {backbone}'s weights (its library's metadata): read at {spec['resize']} px, "
    reason += f"{spec['crop']} px crops, mean {spec['mean']}, std {spec['std']}"
    cutout = round(spec["crop"] / 3)  # a third of the crop, as for STL-10 and ImageNet (75 of 224)
    return Geometry(spec["resize"], None, cutout, reason, spec["crop"], {"mean": spec["mean"], "std": spec["std"]})


def median_shorter_side(paths: list[Path]) -> int | None:
    """Median shorter side of up to SIZE_SAMPLE evenly spaced images (headers only); None if none is readable."""
    step = max(1, len(paths) // SIZE_SAMPLE)
    sides = []
    for path in paths[::step][:SIZE_SAMPLE]:
        try:
            with Image.open(path) as image:
                sides.append(min(image.size))
        except Exception:  # noqa: BLE001 - unreadable files are reported by the folder check
            continue
    return int(statistics.median(sides)) if sides else None


def shown(path: Path) -> str:
    """`path` for a shell command: relative to the current folder when below it (shorter), else absolute."""
    path = Path(path).absolute()
    try:
        return shlex.quote(str(path.relative_to(Path.cwd())))
    except ValueError:
        return shlex.quote(str(path))


def root_as_given(images: str, data_root: Path) -> str:
    """dataset_kwargs.root for --images: as typed when absolute (or ~), else relative to data_root (`birds`,
    `../photos/birds`), so that it names the same folder wherever the two move together."""
    if Path(images).expanduser().is_absolute():
        return images
    return Path(os.path.relpath(Path(images).absolute(), data_root)).as_posix()


def stage_values(stage: str, name: str, root: str, args: argparse.Namespace, geometry: Geometry) -> dict:
    """The template values to set for `stage`, except a computed normalize (set once the split exists)."""
    values = {
        "train_db_name": name,
        "val_db_name": name,
        "dataset_kwargs.root": root,
        "dataset_kwargs.image_size": geometry.image_size,
    }
    if args.num_classes != "auto":  # auto: the template's until estimate_k.py writes its estimate
        values["num_classes"] = int(args.num_classes)
    if args.pretrained:
        # The model's own preprocessing stays in use (no transformation_kwargs); only self-labeling's strong
        # views are sized and normalised here, like it.
        values["backbone"] = args.pretrained
        if stage == "pretext":
            values["pretrained"] = args.weights
        if stage == "selflabel":
            values["augmentation_kwargs.crop_size"] = geometry.crop
            values["augmentation_kwargs.cutout_kwargs.length"] = geometry.cutout
            values.update({f"augmentation_kwargs.normalize.{key}": v for key, v in geometry.normalize.items()})
        if args.quick:
            values.update(QUICK_PRETRAINED)
            if stage != "pretext":  # pretrained.py has no epochs: it does not train
                values["epochs"] = 1
        return values
    values["backbone_kwargs.stem"] = geometry.stem
    values["transformation_kwargs.crop_size"] = geometry.image_size
    if stage == "pretext":
        values["augmentation_kwargs.random_resized_crop.size"] = geometry.image_size
    else:
        values["augmentation_kwargs.crop_size"] = geometry.image_size
        values["augmentation_kwargs.cutout_kwargs.length"] = geometry.cutout
    return {**values, **(QUICK if args.quick else {})}


def normalize_values(mean: list[float], std: list[float]) -> dict:
    rounded = {"mean": [round(v, 4) for v in mean], "std": [round(v, 4) for v in std]}
    blocks = ("augmentation_kwargs", "transformation_kwargs")
    return {f"{block}.normalize.{key}": value for block in blocks for key, value in rounded.items()}


def config_text(template: Path, values: dict, header: str, geometry: Geometry) -> str:
    """The template with `values` set, its header replaced by `header` and its CHANGE notes rewritten."""
    text = set_values(template.read_text(), values)
    body = text[text.index("\nsetup:") + 1 :]
    # The values are filled in: the template's instructions to change them no longer apply.
    body = re.sub(r"#(\s*)CHANGE:?\s*", r"#\1", body)
    if geometry.normalize is None:
        heading, note = "Transformations", "normalize (both places) holds the mean/std of these training images, "
        note += f"computed by\n# tools.new_dataset; crops of {geometry.crop} px.\n"
    else:
        heading, note = "Preprocessing", "the model's own (no transformation_kwargs); the strong views of "
        note += f"self-labeling crop\n# {geometry.crop} px and normalise with its mean/std, as tools.new_dataset "
        note += "read them from its metadata.\n"
    body = re.sub(rf"^# {heading}\..*?(?=^[^#])", f"# {heading}: {note}", body, count=1, flags=re.M | re.S)
    return header + body


def write_configs(
    targets: dict[str, Path], name: str, root: str, args: argparse.Namespace, geometry: Geometry, command: str
) -> tuple[dict, int]:
    """Write the three configs, check the folder through them, fill in mean/std; returns the pretext config and
    the number of training images."""
    for stage, (template, script) in stages(args).items():
        header = (
            f"# {script} on the images in {root} (dataset '{name}'), written by\n#   {command}\n"
            f"# from configs/{stage}/{template}, whose comments below explain each value.\n"
            f"# Input size: {geometry.reason}.\n"
        )
        if args.quick:
            network = "" if args.pretrained else ", a width-8 network"
            header += f"# QUICK smoke-test settings (1 epoch{network}): they check that the pipeline runs.\n"
        if args.num_classes == "auto":
            header += "# num_classes: estimate_k.py --write_k sets it in the SCAN and self-label configs.\n"
        values = stage_values(stage, name, root, args, geometry)
        targets[stage].parent.mkdir(parents=True, exist_ok=True)
        template_path = ROOT / "configs" / stage / template
        targets[stage].write_text(config_text(template_path, values, header, geometry))

    # The folder check: the first construction indexes the images, skips unreadable ones and saves the split.
    cfg = load_config(args.config_env, targets["pretext"])
    train = get_train_dataset(cfg, transforms.ToTensor())
    test = get_val_dataset(cfg)
    kind = f"labeled, {len(train.classes)} classes: {', '.join(train.classes)}" if train.labeled else "unlabeled"
    held_out = test.paths != train.paths  # test_fraction 0: the test split is every image
    split = f"{len(test)} test" if held_out else "nothing held out: the test split is every image"
    print(
        f"Found {len(train) + held_out * len(test)} readable images in {shown(train.root)} ({kind}): "
        f"{len(train)} train, {split}; split saved to {shown(Path(cfg['root_dir']) / name / 'split.json')}.\n"
        f"Input size: {geometry.reason}.",
        flush=True,
    )
    if train.labeled and args.num_classes not in (str(len(train.classes)), "auto"):
        print(f"Note: the folder has {len(train.classes)} classes, you asked for {args.num_classes} clusters.")
    if geometry.normalize is None:  # SimCLR from scratch: these images' mean/std (a pretrained model has its own)
        mean, std = channel_stats(train, cfg["num_workers"])
        for path in targets.values():
            path.write_text(set_values(path.read_text(), normalize_values(mean, std)))
        print(f"Mean {[round(v, 4) for v in mean]}, std {[round(v, 4) for v in std]} written to the configs.")
    for path in targets.values():
        load_config(args.config_env, path)  # each written config must load as its stage will load it
    return cfg, len(train)


def stages(args: argparse.Namespace) -> dict[str, tuple[str, str]]:
    """Stage folder → (template, entry script) of the three stages: SimCLR or a pretrained model as pretext."""
    pretext, kind = ("pretrained", "_pretrained") if args.pretrained else ("simclr", "")
    return {
        "pretext": (f"{pretext}_custom.yml", f"{pretext}.py"),
        "scan": (f"scan{kind}_custom.yml", "scan.py"),
        "selflabel": (f"selflabel{kind}_custom.yml", "selflabel.py"),
    }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Write the three stage configs for a folder of your own images and print the commands to run"
    )
    parser.add_argument("--name", required=True, help="dataset name: results go to <root_dir>/<name>/")
    parser.add_argument("--images", required=True, help="the image folder (class sub-folders optional)")
    parser.add_argument("--num_classes", required=True, help="clusters to find; auto: estimate_k.py picks")
    parser.add_argument("--image_size", type=int, default=None, help="input size in px (default: chosen)")
    parser.add_argument("--config_env", default=str(ROOT / "configs/env.yml"), help="env YAML (configs/env.yml)")
    parser.add_argument("--config_dir", default=str(ROOT / "configs"), help="for pretext/ scan/ selflabel/ (configs/)")
    parser.add_argument("--pretrained", metavar="NAME", help="instead of SimCLR: torchvision:NAME, timm:NAME")
    parser.add_argument("--weights", help="with --pretrained: a local weights file (default: the library's own)")
    parser.add_argument("--quick", action="store_true", help="smoke-test configs: 1 epoch each, a tiny network")
    parser.add_argument("--force", action="store_true", help="overwrite existing configs of this name")
    args = parser.parse_args(argv)
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", args.name):
        parser.error(f"--name {args.name!r}: use letters, digits, '_', '-' and '.' (it names folders and files)")
    if args.name in BUILTIN:
        parser.error(f"--name {args.name} is a built-in dataset; pick another name")
    if args.num_classes != "auto" and not (args.num_classes.isdigit() and int(args.num_classes) >= 2):
        parser.error(f"--num_classes must be a whole number of at least 2, or auto; not {args.num_classes}")
    if args.image_size is not None and args.image_size < 16:
        parser.error(f"--image_size must be at least 16 px, not {args.image_size}")
    if args.pretrained is None:
        if args.weights is not None:
            parser.error("--weights is the weights file of a --pretrained model: give --pretrained NAME too")
        return args
    if not is_library_backbone(args.pretrained):
        parser.error(
            f"--pretrained {args.pretrained!r}: write torchvision:<model name> or timm:<model name>, e.g. "
            "torchvision:resnet50 (names: torchvision.models.list_models()) or timm:vit_small_patch14_dinov2.lvd142m "
            "(names: timm.list_models())"
        )
    if args.image_size is not None:
        parser.error("--image_size does not apply to --pretrained: the model's own preprocessing sets the size")
    try:
        build_library_backbone(args.pretrained)  # an unknown model name, or timm missing: said now, not in stage 1
        args.geometry = pretrained_geometry(args.pretrained)
    except (ValueError, ConfigError) as error:
        parser.error(f"--pretrained {args.pretrained}: {error}")
    if args.weights is None:
        args.weights = "default"
    elif not Path(args.weights).expanduser().is_file():
        parser.error(
            f"--weights {args.weights}: no such file. Give the model's weights file, or leave --weights "
            "out for the library's own weights (downloaded when online)."
        )
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    name = f"{args.name}_quick" if args.quick else args.name
    root = Path(args.images).expanduser().absolute()
    # A relative --images is written relative to data_root as the stages resolve it (from any config).
    data_root = Path(load_config(args.config_env, ROOT / "configs/pretext/simclr_custom.yml")["data_root"])
    if not root.is_dir():
        raise folder_error(root, "folder not found", "Pass the folder that holds your images with --images.")
    paths = find_images(root)
    if not paths:
        raise folder_error(root, f"no image files ({', '.join(IMAGE_EXTENSIONS)})", "Pass the folder of your images.")
    geometry = args.geometry if args.pretrained else choose_geometry(median_shorter_side(paths), args.image_size)

    config_dir = Path(args.config_dir)
    targets = {stage: config_dir / stage / f"{script[:-3]}_{name}.yml" for stage, (_, script) in stages(args).items()}
    existing = [str(path) for path in targets.values() if path.exists()]
    if existing and not args.force:
        raise SystemExit(f"error: {', '.join(existing)} exist already: pass --force to overwrite, or another --name.")

    command = " ".join(["python -m tools.new_dataset", *(argv if argv is not None else sys.argv[1:])])
    # Written under temporary names and renamed once all is done: a failure leaves no half-made config behind
    # and keeps the configs that --force would have replaced.
    drafts = {stage: path.with_name(f".{path.name}.draft.yml") for stage, path in targets.items()}
    try:
        cfg, num_train = write_configs(drafts, name, root_as_given(args.images, data_root), args, geometry, command)
        for stage, draft in drafts.items():
            os.replace(draft, targets[stage])
    finally:
        for draft in drafts.values():
            draft.unlink(missing_ok=True)
    print("The configs:\n" + "\n".join(f"  {shown(path)}" for path in targets.values()), flush=True)

    run = {
        stage: f"--config_env {shown(Path(args.config_env))} --config_exp {shown(path)}"
        for stage, path in targets.items()
    }
    commands = [f"python {shown(ROOT / script)} {run[stage]}" for stage, (_, script) in stages(args).items()]
    candidates = " ".join(str(k) for k in CANDIDATE_K if k <= max(3, num_train // 5))
    estimate = f"{shown(ROOT / 'estimate_k.py')} {run['scan']} --k {candidates} --write_k {shown(targets['scan'])}"
    commands[1:1] = [f"python {estimate} {shown(targets['selflabel'])}"] if args.num_classes == "auto" else []
    model, results = shown(Path(cfg["selflabel_model"])), Path(cfg["root_dir"]) / name
    commands += [
        f"python {shown(ROOT / 'eval.py')} {run['selflabel']} --model {model}",
        f"python {shown(ROOT / 'predict.py')} {run['selflabel']} --model {model} --images {shown(root)} "
        f"--output {shown(results / 'predictions.csv')} --sort_into {shown(results / 'sorted')}",
    ]
    note = "estimate_k.py writes the K it finds into the configs and says how sure it is (docs/own-data.md). "
    report = Path(cfg["selflabel_model"]).parent / "model_eval" / "report.html"
    print(
        "\nNow train, evaluate and sort the images into one folder per cluster, from this folder:\n\n"
        + "\n".join(commands)
        + f"\n\n{note if args.num_classes == 'auto' else ''}Then open {shown(report)} in a browser.",
        flush=True,
    )
    return {"configs": {stage: str(path) for stage, path in targets.items()}, "commands": commands}


if __name__ == "__main__":
    run_cli(main)
