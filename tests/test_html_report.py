"""report.html: gallery choice, the size cap, and the page opened in a real headless browser (offline)."""

from __future__ import annotations

import shutil
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tools.html_report import (
    REPORT_FILE,
    capped_gallery_sizes,
    find_stage_histories,
    render_report,
    select_galleries,
    write_atomic_text,
)
from tools.report_options import GalleryOptions
from utils.history import History

CLASSES = ["red", "green", "blue"]
COLORS = [(220, 30, 30), (30, 200, 40), (30, 40, 220)]


class Tags(HTMLParser):
    """Every start tag with its attributes, to count images and find links."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict]] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def of(self, name: str) -> list[dict]:
        return [attrs for tag, attrs in self.tags if tag == name]


def parse(page: str) -> Tags:
    tags = Tags()
    tags.feed(page)
    return tags


def head_output(predictions: list[int], confidence: list[float], targets: list[int], num_clusters: int) -> dict:
    """Probabilities with the given argmax and max value; the rest spread evenly over the other clusters."""
    n = len(predictions)
    probabilities = torch.zeros(n, num_clusters)
    for i, (cluster, p) in enumerate(zip(predictions, confidence)):
        probabilities[i] = (1 - p) / (num_clusters - 1)
        probabilities[i, cluster] = p
    return {
        "predictions": torch.tensor(predictions),
        "probabilities": probabilities,
        "targets": torch.tensor(targets),
    }


def colour_image(index: int, targets: list[int]) -> Image.Image:
    return Image.new("RGB", (40, 30), COLORS[targets[index]] if targets[index] >= 0 else (128, 128, 128))


def test_galleries_hold_the_most_and_least_confident_members_and_a_seeded_sample():
    output = head_output([0, 0, 1, 0, 0, 2], [0.9, 0.6, 0.8, 0.7, 0.95, 0.5], [0, 0, 1, 0, 1, 2], 4)
    clusters = select_galleries(output["predictions"], output["probabilities"], top=2, least=3, random=3, seed=0)
    assert [c["size"] for c in clusters] == [4, 1, 1, 0]
    assert clusters[0]["top"] == [4, 0]  # confidences 0.95, 0.9 (then 0.7, 0.6)
    assert clusters[0]["least"] == [1, 3]  # 0.6, then 0.7: the 3 least confident, less those shown on top
    assert clusters[1]["least"] == [] and clusters[3]["least"] == []
    assert select_galleries(output["predictions"], output["probabilities"], 1, 2, 0)[0]["least"] == [1, 3]
    assert sorted(clusters[0]["random"]) == clusters[0]["random"] and set(clusters[0]["random"]) < {0, 1, 3, 4}
    assert len(clusters[0]["random"]) == 3 and clusters[1]["random"] == [2] and clusters[3]["top"] == []
    assert clusters[0]["mean_confidence"] == pytest.approx((0.9 + 0.6 + 0.7 + 0.95) / 4)
    again = select_galleries(output["predictions"], output["probabilities"], top=2, least=3, random=3, seed=0)
    assert [c["random"] for c in again] == [c["random"] for c in clusters]


def test_gallery_sizes_shrink_evenly_to_the_cap():
    options = GalleryOptions(top=8, least=8, random=8, max_images=4000)
    assert capped_gallery_sizes(10, options) == (8, 8, 8)
    assert capped_gallery_sizes(160, options) == (8, 8, 8)  # 160 × 24 = 3840
    assert capped_gallery_sizes(1000, options) == (2, 1, 1)  # random shrinks first, then least, then top
    assert capped_gallery_sizes(300, options) == (5, 4, 4)  # 300 × 13 = 3900 <= 4000 < 300 × 14
    assert capped_gallery_sizes(300, GalleryOptions(top=8, least=0, random=8)) == (7, 0, 6)
    assert capped_gallery_sizes(1000, GalleryOptions(top=8, least=0, random=0, max_images=4000)) == (4, 0, 0)
    assert capped_gallery_sizes(5000, options) == (0, 0, 0)


def test_page_counts_names_and_embeds_everything(tmp_path):
    targets = [0, 0, 0, 1, 1, 1, 2, 2, 2, 0]
    predictions = [1, 1, 1, 0, 0, 2, 2, 2, 2, 1]  # cluster 1 ↔ red, 0 ↔ green, 2 ↔ blue
    output = head_output(predictions, [0.9, 0.8, 0.7, 0.9, 0.6, 0.5, 0.9, 0.8, 0.99, 0.4], targets, 3)
    metrics = {"ACC": 0.9, "NMI": 0.8, "hungarian_match": [[0, 1], [1, 0], [2, 2]], "num_samples": 10}
    page, facts = render_report(
        "Test report",
        metrics,
        CLASSES,
        output,
        load_image=lambda i: colour_image(i, targets),
        image_names=[f"/photos/{i}.jpg" for i in range(10)],
        figures={"Confusion matrix": (Path(__file__).parents[1] / "docs/digits_confusion_matrix.png").read_bytes()},
        curves={"scan": [{"epoch": 1, "loss": 2.0}, {"epoch": 2, "loss": 1.5}]},
        options=GalleryOptions(top=2, least=1, random=2),
        names=["green", "red", "blue"],
        unsure_below=0.65,
    )
    tags = parse(page)
    images = tags.of("img")
    # Clusters of sizes 2, 4, 4: 2 top images each, and 1 least confident and 2 random ones where the top ones do
    # not show all members already (clusters 1 and 2); plus the confusion matrix and the curves. Images 4 (0.6),
    # 9 (0.4) and 5 (0.5) are below 0.65: unsure.
    assert facts == {"images": 12, "top": 2, "least": 1, "random": 2, "unsure": 3} and len(images) == 14
    assert all(img["src"].startswith("data:image/") for img in images)
    assert not [attrs for tag, attrs in tags.tags if tag in ("link", "script") and ("href" in attrs or "src" in attrs)]
    links = [a["href"] for a in tags.of("a")]
    assert [link for link in links if link.startswith("#cluster-")] == ["#cluster-0", "#cluster-1", "#cluster-2"]
    assert (
        {link[1:] for link in links if link.startswith("#section-")}
        == {attrs["id"] for attrs in tags.of("h2")}
        == {
            "section-metrics",
            "section-cluster-sizes",
            "section-clusters",
            "section-confusion-matrix",
            "section-training-curves",
        }
    )
    assert "cluster 1 · red — 4 images (40.0 %), mean confidence 0.700, 1 unsure, purity 100.0 %" in page  # 0129
    assert "cluster 2 · blue — 4 images (40.0 %), mean confidence 0.798, 1 unsure, purity 75.0 %" in page  # 5 green
    assert "3 images (30.0 %) are unsure: their confidence is below 0.65" in page
    assert "<td class=num>1</td><td class=num>100.0 %</td>" in page  # cluster 1's unsure and purity cells
    assert "<th>ACC</th><td class='num'>90.00 %</td>" in page
    assert "/photos/9.jpg" in page and "true class: red" in page  # image 9 (red) sits in cluster 1 (red)
    # Only image 5 (green, in the blue cluster) is wrongly placed; with the lowest confidence of cluster 2 it is
    # not among its top 2 (images 8 and 6) but is its least confident, shown in red, and again when the random
    # sample drew it.
    random_of_cluster_2 = select_galleries(output["predictions"], output["probabilities"], 2, 1, 2)[2]["random"]
    assert page.count('class="wrong"') == 1 + random_of_cluster_2.count(5)
    assert page.count("<h4>Least confident</h4>") == 2  # cluster 0's two members are both on top


def test_unlabeled_page_has_sizes_and_galleries_but_no_label_metrics():
    targets = [-1] * 6
    output = head_output([0, 0, 1, 1, 1, 0], [0.9] * 6, targets, 2)
    page, facts = render_report("Unlabeled", {"num_samples": 6}, [], output, lambda i: colour_image(i, targets))
    assert "have no labels" in page and "purity" not in page and "<th>ACC</th>" not in page
    assert facts["images"] == 6 and '<svg class="sizes"' in page  # two clusters of 3: every member, once


def test_a_thousand_clusters_stay_within_the_bound(tmp_path):
    rng = np.random.default_rng(0)
    num_clusters, n = 1000, 6000
    predictions = rng.integers(0, num_clusters, n).tolist()
    output = head_output(predictions, rng.uniform(0.3, 1.0, n).tolist(), [-1] * n, num_clusters)
    noise = [Image.fromarray(rng.integers(0, 256, (96, 96, 3), dtype=np.uint8)) for _ in range(50)]  # JPEG's worst
    options = GalleryOptions()
    page, facts = render_report("Many", {}, [], output, lambda i: noise[i % 50], options=options)
    path = tmp_path / REPORT_FILE
    write_atomic_text(page, path)
    assert facts["top"] + facts["least"] + facts["random"] == 4 and facts["images"] <= options.max_images
    assert len(parse(page).of("details")) == num_clusters + 1  # one per cluster + the table of clusters
    assert "open" not in parse(page).of("details")[1]  # sections start collapsed
    # The bound stated in docs/outputs.md: max_images thumbnails of at most 5 KB (pixel noise) each, plus the markup.
    assert path.stat().st_size < options.max_images * 5_000 + 1_000_000


def test_histories_of_the_stages_beside_the_model_are_found(tmp_path):
    for stage, epochs in (("pretext", 3), ("scan", 2)):
        history = History(tmp_path / "birds" / stage)
        for epoch in range(1, epochs + 1):
            history.log(epoch, loss=1.0)
    found = find_stage_histories(tmp_path / "birds" / "scan" / "model.pth.tar")
    assert {stage: len(records) for stage, records in found.items()} == {"pretext": 3, "scan": 2}
    assert find_stage_histories(tmp_path / "model.pth.tar") == {}


def browser_path() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "chrome"):
        if shutil.which(name):
            return shutil.which(name)
    return None


# Per cluster section, the tooltips' confidence lines of its visible "Least confident" thumbnails.
LEAST_CONFIDENT_TOOLTIPS = """
Array.from(document.querySelectorAll('details.cluster'), section => {
  const heading = Array.from(section.querySelectorAll('h4')).find(h => h.textContent === 'Least confident');
  return Array.from(heading.nextElementSibling.querySelectorAll('img'))
    .filter(img => img.complete && img.getBoundingClientRect().height > 0)
    .map(img => img.title.split('\\n')[1]);
})
"""


def test_report_opens_offline_in_a_headless_browser(tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (requirements-dev.txt)")
    executable = browser_path()
    if executable is None:
        pytest.skip("no Chromium/Chrome found on PATH (Debian: apt-get install chromium)")
    targets = [i % 3 for i in range(30)]
    clusters, confidences = [(i + (i % 5 == 0)) % 3 for i in range(30)], [0.5 + i / 100 for i in range(30)]
    output = head_output(clusters, confidences, targets, 3)
    page_text, facts = render_report(
        "Browser test",
        {"ACC": 0.8, "hungarian_match": [[0, 0], [1, 1], [2, 2]]},
        CLASSES,
        output,
        load_image=lambda i: colour_image(i, targets),
        curves={"pretext": [{"epoch": 1, "loss": 3.0, "lr": 0.1}]},
        options=GalleryOptions(top=3, least=3, random=3),
        names=["red", "green", "green"],  # clusters 1 and 2 merged
        unsure_below=0.6,
    )
    path = tmp_path / REPORT_FILE
    write_atomic_text(page_text, path)
    requests = []
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, args=["--no-sandbox"])
        try:
            page = browser.new_page()
            page.on("request", lambda request: requests.append(request.url))
            page.goto(path.as_uri(), wait_until="load")
            page.evaluate("setAll(true)")  # the button's function: every cluster section open
            sizes = page.evaluate("Array.from(document.images).map(img => [img.complete, img.naturalWidth])")
            opened = page.evaluate("document.querySelectorAll('details.cluster[open]').length")
            least = page.evaluate(LEAST_CONFIDENT_TOOLTIPS)
            summaries = page.evaluate(
                "Array.from(document.querySelectorAll('details.cluster summary'), s => s.innerText)"
            )
            page.click("th:text-is('unsure')")  # sort the table by it: largest first,
            page.click("th:text-is('unsure')")  # then smallest first
            table = page.evaluate(
                "Array.from(document.querySelectorAll('table.sortable tbody tr'), r => "
                "[r.cells[0].innerText, r.cells[1].innerText, r.cells[6].innerText])"
            )
        finally:
            browser.close()
    assert len(sizes) == facts["images"] + 1 and all(complete and width > 0 for complete, width in sizes)
    assert opened == 3
    # Per cluster, its 3 least confident members, least first, visible; images 0-9 (below 0.6) are unsure.
    members = [[i for i in range(30) if clusters[i] == c] for c in range(3)]
    assert least == [
        [f"confidence {confidences[i]:.3f}" for i in sorted(m, key=confidences.__getitem__)[:3]] for m in members
    ]
    unsure = [sum(confidences[i] < 0.6 for i in m) for m in members]
    assert unsure == [4, 4, 2] and [summary.split(" — ")[0] for summary in summaries] == [
        "cluster 0 · red",
        "cluster 1 · green",
        "cluster 2 · green",
    ]
    assert all(f", {count} unsure," in summary for count, summary in zip(unsure, summaries))
    assert table == [["2", "green", "2"], ["0", "red", "4"], ["1", "green", "4"]]
    left = [url for url in requests if not url.startswith("data:") and url != path.as_uri()]
    assert left == [], f"the page requested {left}"


def test_gallery_defaults_are_the_documented_ones_and_thumbnails_start_at_8_px():
    import argparse

    from tools.report_options import add_report_arguments, gallery_options

    parser = argparse.ArgumentParser()
    add_report_arguments(parser)
    options = gallery_options(parser.parse_args([]))
    assert (options.top, options.random, options.thumbnail) == (8, 8, 64)
    assert gallery_options(parser.parse_args(["--thumbnail_size", "8"])).thumbnail == 8
    with pytest.raises(SystemExit):
        parser.parse_args(["--thumbnail_size", "7"])
