"""estimate_k.py on data whose number of classes is known: which K does it recommend against the true one?

    python bench/estimate_k_bench.py --output_dir results/estimate_k_bench \
        --digits_pretext results/digits_demo/seed_0/digits/pretext [--seeds 0 1 2 3 4]

Datasets: the digits through the cached features of a trained SimCLR pretext (its pretext folder is copied;
it must already hold features-*.npy: rerun simclr.py with `--set save_features=true`), and scikit-learn's
bundled tables (wine, iris, breast cancer) and the digits' raw pixels, written by bench/table_features.py.
Each runs estimate_k.main with configs/scan/scan_digits_features.yml; small tables get a smaller batch and
more epochs so that the heads see as many steps as on the digits. Writes <output_dir>/summary.{json,md}.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import estimate_k  # noqa: E402
from bench.table_features import write_table_features  # noqa: E402
from utils.files import write_summary  # noqa: E402

CONFIG = ROOT / "configs/scan/scan_digits_features.yml"
# name → (true K, candidate Ks, extra overrides)
TABLES = {
    "wine": (3, [2, 3, 4, 5, 6, 8], ["batch_size=32", "epochs=200"]),
    "iris": (3, [2, 3, 4, 5, 6], ["batch_size=32", "epochs=200"]),
    "breast_cancer": (2, [2, 3, 4, 5, 6], ["batch_size=64", "epochs=100"]),
    "digits_pixels": (10, [5, 8, 10, 12, 15, 20], []),
}
DIGITS_KS = [5, 8, 10, 12, 15, 20]


def run(name: str, root: Path, ks: list[int], seeds: list[int], overrides: list[str]) -> dict:
    argv = ["--config_exp", str(CONFIG), "--k", *map(str, ks), "--seeds", *map(str, seeds), "--set"]
    argv += [f"root_dir={root}", f"train_db_name={name}", f"val_db_name={name}", *overrides]
    return estimate_k.main(argv)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description="estimate_k.py against known numbers of classes")
    parser.add_argument("--output_dir", default="results/estimate_k_bench")
    parser.add_argument("--digits_pretext", nargs="*", default=[], help="digits pretext folders with cached features")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    args = parser.parse_args(argv)
    output = Path(args.output_dir).resolve()

    results = {}
    for index, source in enumerate(args.digits_pretext):
        root = output / f"digits_pretext_{index}"
        if not (root / "digits" / "pretext").exists():
            shutil.copytree(source, root / "digits" / "pretext")
        results[f"digits (SimCLR features, {source})"] = (10, run("digits", root, DIGITS_KS, args.seeds, []))
    for name, (true_k, ks, overrides) in TABLES.items():
        write_table_features(name, output / "tables")
        results[name] = (true_k, run(name, output / "tables", ks, args.seeds, overrides))

    lines = [
        f"estimate_k.py, seeds {args.seeds}: recommended K against the true number of classes.",
        "",
        "| Data | true K | candidates | recommended K | confidence | stability at recommended / true K | "
        "test ACC at recommended / true K* |",
        "|---|---|---|---|---|---|---|",
    ]
    summary = {}
    for name, (true_k, result) in results.items():
        rows = {row["k"]: row for row in result["rows"]}
        chosen = result["recommendation"]
        lines.append(
            f"| {name} | {true_k} | {', '.join(map(str, rows))} | {chosen['k']} | {chosen['confidence']} | "
            f"{rows[chosen['k']]['stability']:.3f} / {rows[true_k]['stability']:.3f} | "
            f"{rows[chosen['k']]['ACC']:.3f} / {rows[true_k]['ACC']:.3f} |"
        )
        summary[name] = {"true_k": true_k, **result}
    lines.append("\n*labels are used only here, for reference; estimate_k.py never uses them to choose K.")
    write_summary(summary, "\n".join(lines) + "\n", output)
    return summary


if __name__ == "__main__":
    main()
