"""The gallery settings of report.html and eval.py's flags for them, apart from the page's writer
(tools/html_report.py) so that eval.py builds its parser, and answers --help, before torch is imported."""

from __future__ import annotations

import argparse
from dataclasses import dataclass


@dataclass(frozen=True)
class GalleryOptions:
    """How many thumbnails per cluster, how large, and the cap on all of them (bounds the file size)."""

    top: int = 8
    least: int = 8
    random: int = 8
    thumbnail: int = 64
    max_images: int = 4000
    seed: int = 0


def _count(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, not {value}")
    return value


def _pixels(text: str) -> int:
    value = int(text)
    if value < 8:
        raise argparse.ArgumentTypeError(f"must be at least 8 pixels, not {value}")
    return value


def add_report_arguments(parser: argparse.ArgumentParser) -> None:
    """eval.py's flags for report.html."""
    defaults = GalleryOptions()
    group = parser.add_argument_group("report.html")
    for flag, kind, default, meaning in (
        ("--gallery_top", _count, defaults.top, "most confident images shown per cluster"),
        ("--gallery_least", _count, defaults.least, "least confident images shown per cluster"),
        ("--gallery_random", _count, defaults.random, "randomly drawn members shown per cluster"),
        ("--thumbnail_size", _pixels, defaults.thumbnail, "thumbnail side in pixels"),
        ("--report_max_images", _count, defaults.max_images, "cap on all thumbnails (bounds the file size)"),
    ):
        group.add_argument(flag, type=kind, default=default, help=f"{meaning} (default: %(default)s)")


def gallery_options(args: argparse.Namespace) -> GalleryOptions:
    return GalleryOptions(
        args.gallery_top, args.gallery_least, args.gallery_random, args.thumbnail_size, args.report_max_images
    )
