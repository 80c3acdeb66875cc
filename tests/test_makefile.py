"""The Makefile's installs: what `make test` and `make demo` put on a machine, and the announced browser step."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from tests.conftest import ROOT

MAKE = shutil.which("make")
pytestmark = pytest.mark.skipif(MAKE is None, reason="make is not installed")
DEV_ONLY = ("pytest", "ruff", "playwright")


def fake_root_with_apt(tmp_path):
    """A PATH holding only an `id` that says root and an `apt-get` that logs its calls: no browser on it."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "id").write_text("#!/bin/sh\necho 0\n")
    (bin_dir / "apt-get").write_text(f'#!/bin/sh\necho "apt-get $*" >> {tmp_path / "apt.log"}\nexit 1\n')
    for script in bin_dir.iterdir():
        script.chmod(0o755)
    return {**os.environ, "PATH": str(bin_dir)}


def test_browser_install_is_announced_before_apt_runs_and_skipped_on_request(tmp_path):
    env = fake_root_with_apt(tmp_path)
    done = subprocess.run([MAKE, "-s", "browser"], cwd=ROOT, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[0].startswith("Installing Chromium with apt-get")
    assert "SKIP_BROWSER=1" in done.stdout and "apt-get update" in (tmp_path / "apt.log").read_text()
    (tmp_path / "apt.log").unlink()
    skipped = subprocess.run(
        [MAKE, "-s", "browser", "SKIP_BROWSER=1"], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert skipped.returncode == 0 and "Installing" not in skipped.stdout
    assert not (tmp_path / "apt.log").exists()


def dry_run(target: str) -> str:
    return subprocess.run(
        [MAKE, "-n", "-B", target, "SKIP_BROWSER=1"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout


def test_demo_installs_only_the_runtime_packages_and_test_adds_the_dev_ones():
    runtime = (ROOT / "requirements.txt").read_text().lower()
    dev = (ROOT / "requirements-dev.txt").read_text().lower()
    assert not [name for name in DEV_ONLY if name in runtime]
    assert all(name in dev for name in DEV_ONLY) and "-r requirements.txt" in dev
    assert "requirements-dev.txt" not in dry_run("demo") and "-r requirements.txt" in dry_run("demo")
    assert "-r requirements-dev.txt" in dry_run("test")
