"""Render local HTML in a real headless Chromium, so tests see what a person's browser would show."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path

import pytest

BINARY_NAMES = ("chromium", "chromium-browser", "google-chrome")
TIMEOUT_S = 60
# without the networking switches Chromium keeps retrying update and sync servers on a closed network
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)


def chromium_binary() -> str:
    """The browser's path; skips the test without one, unless VITCAM_REQUIRE_CHROMIUM=1 demands it."""
    for name in BINARY_NAMES:
        found = shutil.which(name)
        if found:
            return found
    message = (
        f"no Chromium found (looked for {', '.join(BINARY_NAMES)}); install it: apt-get install chromium"
    )
    if os.environ.get("VITCAM_REQUIRE_CHROMIUM") == "1":
        pytest.fail(f"VITCAM_REQUIRE_CHROMIUM=1 but {message}", pytrace=False)
    pytest.skip(message)


def _run(arguments: list[str]) -> str:
    """Run Chromium with a fresh profile; stdout on success, a clear error (with stderr) otherwise."""
    with tempfile.TemporaryDirectory(prefix="vitcam-chromium-", ignore_cleanup_errors=True) as profile:
        command = [chromium_binary(), *FLAGS, f"--user-data-dir={profile}", *arguments]
        # own process group: on a timeout the renderer and helper processes go down with the browser
        process = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
        )
        try:
            stdout, stderr = process.communicate(timeout=TIMEOUT_S)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.communicate()
            raise AssertionError(
                f"Chromium did not finish within {TIMEOUT_S} s: {' '.join(command)}"
            ) from None
    if process.returncode != 0:
        raise AssertionError(
            f"Chromium exited with {process.returncode}: {' '.join(command)}\n{stderr[-4000:]}"
        )
    return stdout


def rendered_dom(html_path: Path, budget_ms: int = 5000, size: tuple[int, int] | None = None) -> str:
    """The DOM after scripts ran (and up to ``budget_ms`` of virtual time passed), serialised as HTML;
    ``size``: the window's (width, height)."""
    window = [f"--window-size={size[0]},{size[1]}"] if size else []
    return _run([f"--virtual-time-budget={budget_ms}", *window, "--dump-dom", html_path.resolve().as_uri()])


def screenshot(html_path: Path, png_path: Path, size: tuple[int, int] = (1280, 1600)) -> None:
    """Save a PNG of the page's top ``size`` (width, height) pixels, once its scripts have run."""
    png_path.parent.mkdir(parents=True, exist_ok=True)
    width, height = size
    _run(
        [
            "--virtual-time-budget=5000",
            f"--screenshot={png_path.resolve()}",
            f"--window-size={width},{height}",
            "--hide-scrollbars",
            html_path.resolve().as_uri(),
        ]
    )
