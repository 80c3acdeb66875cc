"""report.html: one self-contained page to look at the clusters, written by eval.py beside metrics.json.

It holds the metrics (with labels), the training curves found beside the model, the cluster sizes, the confusion
matrix and, per cluster under its name, its most confident images, its least confident ones (where a user finds
the mistakes), a random sample of its members and how many are unsure (below --unsure_below). Everything is
inline (JPEG `data:` URIs, SVG, style, script), so it opens offline and can be mailed. For 1,000 clusters: each
is a collapsed <details> section beyond OPEN_UP_TO, and `max_images` caps the thumbnails, which bounds the file
size (measured in docs/outputs.md).
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from tools.report_options import GalleryOptions
from utils.files import atomic_write
from utils.history import HISTORY_FILE, plot_history, read_history
from utils.progress import tqdm

REPORT_FILE = "report.html"
OPEN_UP_TO = 20  # clusters whose sections start open; beyond, all start collapsed
STAGES = ("pretext", "scan", "selflabel")
JPEG_QUALITY = 80


def capped_gallery_sizes(num_clusters: int, options: GalleryOptions) -> tuple[int, int, int]:
    """(top, least, random) per cluster such that num_clusters × their sum <= max_images: the largest shrinks
    first, on a tie random before least before top."""
    sizes = [options.top, options.least, options.random]
    while num_clusters * sum(sizes) > options.max_images and sum(sizes) > 0:
        sizes[max(range(3), key=lambda i: (sizes[i], i))] -= 1
    return sizes[0], sizes[1], sizes[2]


def select_galleries(
    predictions: torch.Tensor, probabilities: torch.Tensor, top: int, least: int, random: int, seed: int = 0
) -> list[dict]:
    """Per cluster: its members' count, mean confidence, the `top` most confident members, the `least` confident others
    (least first) and `random` members. Confidence is the cluster's softmax probability. The random sample is drawn
    (seeded) from all members, so it shows what a typical member looks like, not only the easy or the borderline
    ones."""
    predictions, probabilities = predictions.cpu().numpy(), probabilities.float().cpu().numpy()
    rng = np.random.default_rng(seed)
    order = np.argsort(predictions, kind="stable")
    bounds = np.searchsorted(predictions[order], np.arange(probabilities.shape[1] + 1))
    clusters = []
    for cluster in range(probabilities.shape[1]):
        members = order[bounds[cluster] : bounds[cluster + 1]]
        confidence = probabilities[members, cluster]
        ranked = members[np.argsort(-confidence, kind="stable")]
        sample = rng.choice(members, size=min(random, len(members)), replace=False) if len(members) else members
        clusters.append(
            {
                "cluster": cluster,
                "members": members,
                "size": len(members),
                "mean_confidence": float(confidence.mean()) if len(members) else None,
                "top": ranked[:top].tolist(),
                "least": ranked[max(top, len(ranked) - least) :][::-1].tolist(),
                "random": sorted(sample.tolist()),
            }
        )
    return clusters


def thumbnail_uri(image: Image.Image, size: int) -> str:
    """A JPEG `data:` URI of `image` fitted into size × size (never enlarged: the browser scales small ones)."""
    image = image.convert("RGB")
    image.thumbnail((size, size))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=JPEG_QUALITY)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def png_uri(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def find_stage_histories(model_path: str | Path) -> dict[str, list[dict]]:
    """The history.jsonl records of the stages found beside the model, in stage order. A stage's model lies in
    <root>/<db>/<stage>/model.pth.tar, so its own folder and its sibling stage folders are searched; a model-zoo file
    elsewhere usually has none."""
    model_dir = Path(model_path).resolve().parent
    folders = [model_dir.parent / stage for stage in STAGES] + [model_dir]
    histories = {}
    for folder in dict.fromkeys(folders):
        records = read_history(folder / HISTORY_FILE)
        if records:
            histories[folder.name] = records
    return histories


def size_chart_svg(sizes: list[int], labels: list[str], width: int = 900, height: int = 180) -> str:
    """Inline SVG bar chart of the cluster sizes, with the size of a perfectly balanced clustering as a line."""
    count, largest = len(sizes), max(max(sizes), 1)
    bar = width / max(count, 1)
    uniform = sum(sizes) / max(count, 1)
    bars = []
    for index, (size, label) in enumerate(zip(sizes, labels)):
        bar_height = height * size / largest
        bar_width = max(bar - (1 if bar > 3 else 0), 0.5)  # a gap between bars while they are wide enough
        bars.append(
            f'<rect x="{index * bar:.2f}" y="{height - bar_height:.2f}" width="{bar_width:.2f}" '
            f'height="{bar_height:.2f}"><title>{html.escape(label)}: {size}</title></rect>'
        )
    line_y = height - height * uniform / largest
    return (
        f'<svg class="sizes" viewBox="0 0 {width} {height + 2}" preserveAspectRatio="none" role="img" '
        f'aria-label="cluster sizes">{"".join(bars)}'
        f'<line x1="0" x2="{width}" y1="{line_y:.2f}" y2="{line_y:.2f}"><title>balanced: {uniform:.1f}</title></line>'
        f"</svg>"
    )


def _metrics_section(metrics: dict, unlabeled_clustering: bool) -> str:
    """The metrics table: the label metrics as percentages, then the facts; a note when there are no labels."""
    rows = []
    for key in ("ACC", "NMI", "ARI", "AMI", "ACC Top-5"):
        if isinstance(metrics.get(key), int | float):
            rows.append((key, f"{100 * metrics[key]:.2f} %"))
    for k, value in (metrics.get("neighbor_acc") or {}).items():
        rows.append((f"top-{k} neighbour accuracy", "n/a (no labels)" if value is None else f"{100 * value:.2f} %"))
    for key, name in (("matching", "cluster → class matching"), ("num_samples", "images evaluated"), ("head", "head")):
        if key in metrics:
            rows.append((name, str(metrics[key])))
    text = ""
    if unlabeled_clustering:
        text += (
            "<p class='note'>The evaluated images have no labels: ACC, NMI, ARI and the confusion matrix "
            "are not computed. Cluster sizes and galleries are below.</p>"
        )
    if rows:
        text += (
            "<table>"
            + "".join(f"<tr><th>{html.escape(k)}</th><td class='num'>{html.escape(v)}</td></tr>" for k, v in rows)
            + "</table>"
        )
    return text


STYLE = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 1.5em auto; max-width: 1200px; padding: 0 1em; color: #222; }
h1 { font-size: 1.5em; margin-bottom: 0.2em; } h2 { margin-top: 1.6em; border-bottom: 1px solid #ddd; }
nav a { margin-right: 1em; }
table { border-collapse: collapse; } td, th { padding: 2px 10px; border-bottom: 1px solid #eee; text-align: left; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
table.sortable th { cursor: pointer; text-decoration: underline dotted; }
.note { color: #666; }
svg.sizes { width: 100%; height: 160px; background: #fafafa; display: block; }
svg.sizes rect { fill: #4c78a8; } svg.sizes rect:hover { fill: #f58518; }
svg.sizes line { stroke: #e45756; stroke-dasharray: 4 3; stroke-width: 1.5; vector-effect: non-scaling-stroke; }
.axis { display: flex; justify-content: space-between; color: #666; font-size: 12px; }
img.figure { max-width: min(100%, 800px); } img.curves { max-width: 900px; width: 100%; }
details { border: 1px solid #ddd; border-radius: 4px; margin: 6px 0; padding: 4px 8px; }
summary { cursor: pointer; font-weight: 600; }
h4 { margin: 8px 0 2px; font-weight: 500; color: #444; }
.galleries { display: flex; flex-wrap: wrap; column-gap: 28px; }
.gallery { display: flex; flex-wrap: wrap; gap: 6px; margin: 4px 0 8px; }
figure { margin: 0; text-align: center; font-size: 11px; }
figure img { object-fit: contain; background: #eee; display: block; }
figcaption { max-width: var(--thumb); overflow: hidden; text-overflow: ellipsis; white-space: nowrap; }
.wrong { color: #c0392b; } .right { color: #27ae60; }
"""

SCRIPT = """
function setAll(open) { document.querySelectorAll('details.cluster').forEach(d => d.open = open); }
function openTarget() {
  const target = location.hash && document.getElementById(location.hash.slice(1));
  if (target && target.tagName === 'DETAILS') target.open = true;
}
function sortBy(th) {  // click a column of the cluster table: sort by it, again: reverse
  const table = th.closest('table'), column = th.cellIndex, body = table.tBodies[0];
  const key = row => { const text = row.cells[column].textContent; const n = parseFloat(text);
                       return isNaN(n) ? text : n; };
  const rows = Array.from(body.rows), descending = th.dataset.order !== 'desc';
  rows.sort((a, b) => (key(a) > key(b) ? 1 : key(a) < key(b) ? -1 : 0) * (descending ? -1 : 1));
  th.dataset.order = descending ? 'desc' : 'asc';
  rows.forEach(row => body.appendChild(row));
}
window.addEventListener('hashchange', openTarget); window.addEventListener('DOMContentLoaded', openTarget);
"""


def _figure(uri: str, caption: str, tooltip: str, caption_class: str, size: int) -> str:
    return (
        f'<figure><img src="{uri}" width="{size}" height="{size}" alt="{html.escape(tooltip)}" '
        f'title="{html.escape(tooltip)}"><figcaption class="{caption_class}">{html.escape(caption)}</figcaption>'
        f"</figure>"
    )


def _percent(fraction: float) -> str:
    return f"{100 * fraction:.1f} %"


def render_report(
    title: str,
    metrics: dict,
    class_names: list[str],
    head_output: dict | None = None,
    load_image: Callable[[int], Image.Image] | None = None,
    image_names: list[str] | None = None,
    figures: dict[str, bytes] | None = None,
    curves: dict[str, list[dict]] | None = None,
    options: GalleryOptions = GalleryOptions(),
    names: list[str] | None = None,
    unsure_below: float = 0.0,
) -> tuple[str, dict]:
    """The page as a string, and facts about it: thumbnails shown, gallery sizes per cluster.

    `head_output` (one head of engine.inference.Outputs) makes it a clustering report; without it only the metrics and
    curves are shown (a pretext model). `figures`: title → PNG bytes, e.g. the confusion matrix; `curves`:
    stage → history records; `names`: per cluster (tools/cluster_names.py). Sections: metrics, cluster sizes,
    clusters, figures, training curves.
    """
    labeled = head_output is not None and not bool((head_output["targets"] < 0).any())
    sections: dict[str, str] = {"Metrics": _metrics_section(metrics, head_output is not None and not labeled)}
    facts = {"images": 0, "top": 0, "least": 0, "random": 0, "unsure": 0}
    if head_output is not None:
        sizes, clusters = _cluster_sections(
            head_output, metrics, class_names, labeled, load_image, image_names, options, facts, names, unsure_below
        )
        sections.update({"Cluster sizes": sizes, "Clusters": clusters})
    for name, data in (figures or {}).items():
        sections[name] = f"<img class='figure' src='{png_uri(data)}' alt='{html.escape(name)}'>"
    if curves:
        sections["Training curves"] = "".join(
            f"<h3>{html.escape(stage)} ({len(records)} epoch{'s' if len(records) != 1 else ''})</h3>"
            f"<img class='curves' src='{png_uri(plot_history(records))}' alt='training curves of {stage}'>"
            for stage, records in curves.items()
        )
    anchors = {name: "section-" + "-".join(name.lower().split()) for name in sections}
    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        # Nothing outside the file may load, even if a future change slips an external link in.
        "<meta http-equiv='Content-Security-Policy' content=\"default-src 'none'; img-src data:; "
        "style-src 'unsafe-inline'; script-src 'unsafe-inline'\">",
        f"<title>{html.escape(title)}</title><style>{STYLE}</style><script>{SCRIPT}</script></head><body>",
        f"<h1>{html.escape(title)}</h1>",
    ]
    if metrics.get("model"):
        parts.append(f"<p class='note'>Model: <code>{html.escape(str(metrics['model']))}</code></p>")
    parts.append("<nav>" + "".join(f"<a href='#{anchors[name]}'>{name}</a>" for name in sections) + "</nav>")
    parts += [f"<h2 id='{anchors[name]}'>{html.escape(name)}</h2>{body}" for name, body in sections.items()]
    parts.append("</body></html>")
    return "\n".join(parts), facts


def _cluster_sections(
    head_output: dict,
    metrics: dict,
    class_names: list[str],
    labeled: bool,
    load_image: Callable[[int], Image.Image] | None,
    image_names: list[str] | None,
    options: GalleryOptions,
    facts: dict,
    names: list[str] | None,
    unsure_below: float,
) -> tuple[str, str]:
    """(the cluster-size chart, the table of clusters and one collapsible gallery section per cluster)."""
    predictions, probabilities = head_output["predictions"], head_output["probabilities"]
    targets, confidences = head_output["targets"].cpu().numpy(), probabilities.float().cpu().numpy()
    num_clusters, total = probabilities.shape[1], max(int(predictions.numel()), 1)
    matched = {int(cluster): int(cls) for cluster, cls in metrics.get("hungarian_match", [])}
    top, least, random = capped_gallery_sizes(num_clusters, options)
    clusters = select_galleries(predictions, probabilities, top, least, random, options.seed)
    unsure = [int((confidences[c["members"], c["cluster"]] < unsure_below).sum()) for c in clusters]
    facts.update(top=top, least=least, random=random, unsure=sum(unsure))
    titles = [f"cluster {c['cluster']}" + (f" · {names[c['cluster']]}" if names else "") for c in clusters]
    largest = max(c["size"] for c in clusters)
    unsure_note = f" {sum(unsure)} images ({_percent(sum(unsure) / total)}) are unsure: their confidence is below"
    unsure_note = f"{unsure_note} {unsure_below:g} (--unsure_below)." if unsure_below else ""
    sizes = (
        f"<p class='note'>{num_clusters} clusters, {total} images; the dashed line is the size of a perfectly "
        f"balanced clustering ({total / num_clusters:.1f}). Hover a bar for its cluster and size.{unsure_note}</p>"
        f"<div class='axis'><span>largest: {largest}</span></div>"
        + size_chart_svg([c["size"] for c in clusters], titles)
        + f"<div class='axis'><span>cluster 0</span><span>cluster {num_clusters - 1}</span></div>"
    )

    uris = {}
    if load_image is not None:
        shown = sorted({index for c in clusters for index in c["top"] + c["least"] + c["random"]})
        for index in tqdm(shown, desc="Report thumbnails", leave=False):
            uris[index] = thumbnail_uri(load_image(index), options.thumbnail)

    def gallery(indices: list[int], cluster: int, cls: int | None) -> str:
        figures = []
        for index in indices:
            confidence = confidences[index, cluster]
            tooltip = f"{image_names[index] if image_names else f'test image {index}'}\nconfidence {confidence:.3f}"
            caption, caption_class = f"{confidence:.2f}", ""
            if labeled:
                true_name = class_names[targets[index]]
                tooltip += f"\ntrue class: {true_name}"
                caption, caption_class = true_name, "right" if targets[index] == cls else "wrong"
            figures.append(_figure(uris[index], caption, tooltip, caption_class, options.thumbnail))
        facts["images"] += len(figures)
        return f"<div class='gallery'>{''.join(figures)}</div>"

    columns = ["cluster", "name", "matched class", "images", "share", "mean confidence"]
    columns += (["unsure"] if unsure_below else []) + (["purity"] if labeled else [])
    rows, sections = [], []
    for c, title, unsure_count in zip(clusters, titles, unsure):
        cluster = c["cluster"]
        cls = matched.get(cluster)
        purity = float((targets[c["members"]] == cls).mean()) if labeled and cls is not None and c["size"] else None
        confidence = "–" if c["mean_confidence"] is None else f"{c['mean_confidence']:.3f}"
        cells = [
            f"<a href='#cluster-{cluster}'>{cluster}</a>",
            html.escape(names[cluster]) if names else "",
            html.escape(class_names[cls]) if cls is not None else "",
            str(c["size"]),
            _percent(c["size"] / total),
            confidence,
        ]
        cells += [str(unsure_count)] if unsure_below else []
        cells += ["–" if purity is None else _percent(purity)] if labeled else []
        rows.append(
            "<tr>"
            + "".join(f"<td{'' if i in (1, 2) else ' class=num'}>{cell}</td>" for i, cell in enumerate(cells))
            + "</tr>"
        )
        images = f"{c['size']} image{'' if c['size'] == 1 else 's'}"
        summary = f"{title} — {images} ({_percent(c['size'] / total)}), mean confidence {confidence}"
        summary += f", {unsure_count} unsure" if unsure_below else ""
        summary += "" if purity is None else f", purity {_percent(purity)}"
        body = ""
        if not c["size"]:
            body = "<p class='note'>No image was assigned to this cluster.</p>"
        elif load_image is not None:
            sample = c["random"] if c["size"] > len(c["top"]) else []  # otherwise every member is shown already
            shown = {"Most confident": c["top"], "Least confident": c["least"], "Random sample": sample}
            body = "".join(f"<div><h4>{h}</h4>{gallery(ix, cluster, cls)}</div>" for h, ix in shown.items() if ix)
            body = f"<div class='galleries'>{body}</div>"
        is_open = " open" if num_clusters <= OPEN_UP_TO else ""
        sections.append(
            f"<details class='cluster' id='cluster-{cluster}'{is_open}><summary>{html.escape(summary)}</summary>"
            f"{body}</details>"
        )

    explanation = (
        f"Per cluster, its {top} most confident images (highest probability for the cluster), its {least} least "
        f"confident ones (where its mistakes are) and {random} members drawn at random; hover a thumbnail for its "
        f"file and confidence"
        + ("; the caption is the image's true class, green when it is the cluster's matched class." if labeled else ".")
    )
    if (top, least, random) != (options.top, options.least, options.random):
        explanation += (
            f" The galleries were shrunk from {options.top} + {options.least} + {options.random} to {top} + {least} + "
            f"{random} images so that the page holds at most {options.max_images} thumbnails (--report_max_images)."
        )
    header = "".join(
        f"<th{'' if i in (1, 2) else ' class=num'} onclick='sortBy(this)'>{column}</th>"
        for i, column in enumerate(columns)
    )
    table = (
        f"<details{' open' if num_clusters <= 50 else ''}><summary>Table of clusters (click a column to sort)"
        f"</summary><table class='sortable'><thead><tr>{header}</tr></thead><tbody>{''.join(rows)}</tbody>"
        f"</table></details>"
    )
    clusters_html = (
        f"<p class='note'>{explanation}</p><p><button onclick='setAll(true)'>Open all</button> "
        f"<button onclick='setAll(false)'>Close all</button></p>"
        f"<div style='--thumb:{options.thumbnail}px'>{table}{''.join(sections)}</div>"
    )
    return sizes, clusters_html


def write_atomic_text(text: str, path: Path) -> None:
    with atomic_write(path, "w", encoding="utf-8") as file:
        file.write(text)


def write_eval_report(
    out_dir: str | Path,
    model_path: str | Path,
    metrics: dict,
    dataset=None,
    head_output: dict | None = None,
    options: GalleryOptions = GalleryOptions(),
    names: list[str] | None = None,
    unsure_below: float = 0.0,
) -> Path:
    """eval.py's report.html in `out_dir`: metrics, curves of the stages beside the model and, for a clustering
    model, sizes, galleries and the confusion matrix that clustering_report drew there."""
    out_dir = Path(out_dir)
    figures = {}
    confusion = out_dir / "confusion_matrix.png"
    if "ACC" in metrics and confusion.is_file():  # only this evaluation's: without labels none is drawn
        figures["Confusion matrix"] = confusion.read_bytes()
    kind = "Clustering" if head_output is not None else "Pretext features"
    page, facts = render_report(
        title=f"{kind} report: {Path(model_path).name}",
        metrics=metrics,
        class_names=list(getattr(dataset, "classes", []) or []),
        head_output=head_output,
        load_image=dataset.load_image if dataset is not None else None,
        image_names=[str(p) for p in dataset.paths] if getattr(dataset, "paths", None) is not None else None,
        figures=figures,
        curves=find_stage_histories(model_path),
        options=options,
        names=names,
        unsure_below=unsure_below,
    )
    path = out_dir / REPORT_FILE
    write_atomic_text(page, path)
    size = path.stat().st_size
    print(f"Saved {path} ({size / 1e6:.1f} MB, {facts['images']} thumbnails): open it in a browser", flush=True)
    return path
