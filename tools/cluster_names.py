"""The names of the clusters, and `unsure` for the images no cluster is sure of (below --unsure_below).

eval.py writes cluster_names.yml beside its outputs (each cluster → the class it matched on labeled data, else
`cluster_03`) for the user to edit; eval.py and predict.py read it back for predictions.csv, report.html and
predict.py --sort_into. Clusters given the same name are merged: one folder, one label. No torch here: the entry
scripts add these flags before importing it.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import yaml

from utils.config import ConfigError
from utils.files import atomic_write

NAMES_FILE = "cluster_names.yml"
UNSURE = "unsure"
HEADER = """\
# The name of each cluster, read by eval.py and predict.py (--names): edit the names, keep the numbers.
# Clusters given the same name are merged (one folder, one label); a cluster named `unsure` joins the unsure images.
# Delete this file and rerun eval.py to get the default names back.
"""


def _probability(text: str) -> float:
    value = float(text)
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"must be a probability from 0 to 1, not {value}")
    return value


def add_naming_arguments(parser: argparse.ArgumentParser) -> None:
    """--names and --unsure_below of eval.py and predict.py."""
    parser.add_argument("--names", metavar="FILE", help=f"cluster names (default: {NAMES_FILE} of eval.py's outputs)")
    help = f"images of a lower confidence are `{UNSURE}` (default: 0, none)"
    parser.add_argument("--unsure_below", type=_probability, default=0.0, metavar="P", help=help)


def default_names(num_clusters: int, cluster_to_class: dict[int, str]) -> list[str]:
    """The matched class (a `/` in it made `_`), else `cluster_03`: zero-padded, so that folders sort by cluster."""
    width = max(2, len(str(num_clusters - 1)))
    return [
        cluster_to_class[c].replace("/", "_") if c in cluster_to_class else f"cluster_{c:0{width}d}"
        for c in range(num_clusters)
    ]


def read_names(path: Path, num_clusters: int) -> list[str]:
    """The name of each cluster in `path`; a ConfigError names each thing to fix."""
    fix = (
        f"Edit {path}: one line `N: name` for each cluster N from 0 to {num_clusters - 1}, or delete the file and "
        f"rerun eval.py to write the default names."
    )
    try:
        given = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as error:
        raise ConfigError(f"{path} is not valid YAML ({error}). {fix}") from None
    if not isinstance(given, dict):
        raise ConfigError(f"{path} holds a {type(given).__name__}, not cluster numbers mapped to names. {fix}")
    given = {int(k) if isinstance(k, str) and k.isdigit() else k: v for k, v in given.items()}  # "3": finch too
    unknown = [str(key) for key in given if type(key) is not int or not 0 <= key < num_clusters]
    missing = [str(c) for c in range(num_clusters) if c not in given]
    names = {key: str(value) if type(value) in (str, int, float) else "" for key, value in given.items()}
    bad = [f"{k}: {given[k]!r}" for k, name in names.items() if name.strip() in ("", ".", "..") or {*"/\\"} & {*name}]
    problems = [
        f"this model has no cluster {', '.join(unknown)} (remove those lines)" if unknown else "",
        f"cluster {', '.join(missing)} has no name" if missing else "",
        f"a name must be a folder name (not empty, `.` or `..`, without / or \\): {', '.join(bad)}" if bad else "",
    ]
    if any(problems):
        raise ConfigError(f"{path}: {'; '.join(p for p in problems if p)}. {fix}")
    return [names[c] for c in range(num_clusters)]


def cluster_names(
    path: Path, num_clusters: int, cluster_to_class: dict[int, str], write: bool, model_sha256: str
) -> list[str]:
    """The names in `path` if it exists; else the default names, written there when `write` (eval.py), stamped
    with the model file's SHA-256: names given to one model's clusters need not fit a retrained one's, so a file
    stamped for another model is used with a warning that says so."""
    if path.is_file():
        print(f"Cluster names from {path}", flush=True)
        stamp = re.search(r"^# Named for the model file with sha256 ([0-9a-f]{64})", path.read_text("utf-8"), re.M)
        if stamp and stamp.group(1) != model_sha256:
            print(
                f"warning: {path} names the clusters of another model file (sha256 {stamp.group(1)[:12]}, this one "
                f"{model_sha256[:12]}): retrained clusters need not be the ones named. Check the names against this "
                "model's report.html, or delete the file and rerun eval.py for the default names.",
                flush=True,
            )
        return read_names(path, num_clusters)
    names = default_names(num_clusters, cluster_to_class)
    if write:
        stamp = f"# Named for the model file with sha256 {model_sha256}\n"
        with atomic_write(path, "w", encoding="utf-8") as file:
            file.write(HEADER + stamp + yaml.safe_dump(dict(enumerate(names)), allow_unicode=True, sort_keys=False))
        print(f"Saved {path}: the cluster names, yours to edit (then rerun eval.py or predict.py)", flush=True)
    return names


def assign_names(head_output: dict, names: list[str], unsure_below: float) -> list[str]:
    """Per image, its cluster's name, or `unsure` when its confidence is below `unsure_below`."""
    confidences = head_output["probabilities"].max(dim=1).values.tolist()
    clusters = head_output["predictions"].tolist()
    return [UNSURE if confidence < unsure_below else names[c] for c, confidence in zip(clusters, confidences)]
