"""Headless Chromium for tests: load a local HTML file and return the DOM after its scripts ran."""
from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

CHROMIUM = "/usr/bin/chromium"  # Debian's package; `apt-get install -y chromium`


def available() -> bool:
    """True when the Chromium binary is installed."""
    return os.access(CHROMIUM, os.X_OK)


def dump_dom(html_path: str | Path, *, timeout: float = 60.0) -> str:
    """The serialised DOM of `html_path` after load, as headless Chromium sees it offline."""
    profile = tempfile.mkdtemp(prefix="timnet-chromium-")
    try:
        cmd = [
            CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            "--disable-dev-shm-usage",  # containers often have a tiny /dev/shm
            f"--user-data-dir={profile}",
            # virtual time lets the load event (and our check script) finish before the dump
            "--virtual-time-budget=5000", "--dump-dom", Path(html_path).resolve().as_uri(),
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        if proc.returncode != 0 or "<html" not in proc.stdout:
            raise RuntimeError(f"chromium failed (exit {proc.returncode}): {proc.stderr[-2000:]}")
        return proc.stdout
    finally:
        shutil.rmtree(profile, ignore_errors=True)
