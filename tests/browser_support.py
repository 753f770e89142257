"""Helpers for the real-browser tests: Debian's Chromium through playwright, and a `streamlit run` server.

No browser is ever downloaded: playwright drives the Chromium that `scripts/install-browser.sh`
installs from Debian (`/usr/bin/chromium`, or WORKBENCH_CHROMIUM). Never run `playwright install`.
"""
from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Iterator

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
APP = REPO_ROOT / "workbench" / "ui" / "server.py"  # what `make run` serves: the app behind the Host and framing guard
OUTPUT_DIR = REPO_ROOT / "test-output" / "browser"  # git-ignored via /test-output/

DEFAULT_CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",  # needed as root (CI runs as root); harmless otherwise
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
]
# playwright gives every launch a fresh temporary profile (it refuses --user-data-dir in args).

SERVER_START_TIMEOUT_S = 60.0


def chromium_path() -> str:
    """The Chromium binary to drive: WORKBENCH_CHROMIUM if set, else Debian's /usr/bin/chromium."""
    return os.environ.get("WORKBENCH_CHROMIUM") or DEFAULT_CHROMIUM


def in_ci() -> bool:
    """True under CI (`.ci/run` sets CI=true), where a browser test must run, never skip."""
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def require_chromium() -> str:
    """The Chromium path; without one, skip on a user's machine (with the install hint), fail in CI."""
    path = chromium_path()
    if not (os.path.isfile(path) and os.access(path, os.X_OK)):
        hint = (f"no Chromium at {path}. Install Debian's chromium with "
                "`sudo bash scripts/install-browser.sh` (or `sudo apt-get install -y --no-install-recommends "
                "chromium`), or point WORKBENCH_CHROMIUM at a Chromium binary.")
        if in_ci():
            pytest.fail(f"browser test cannot run in CI: {hint} CI must install it (.ci/run does).")
        pytest.skip(f"browser test skipped: {hint} .ci/run installs it in CI.")
    return path


def sync_playwright():
    """playwright.sync_api.sync_playwright, with a clear failure when the package is missing."""
    try:
        from playwright.sync_api import sync_playwright as sp
    except ImportError as exc:  # a broken install, not a reason to skip: requirements.txt pins it
        pytest.fail(
            f"Chromium is installed but the playwright package is not ({exc}): "
            f"run `{sys.executable} -m pip install -r requirements.txt` (never `playwright install`)."
        )
    return sp


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


@contextlib.contextmanager
def streamlit_server(env: dict[str, str], log_path: Path,
                     timeout_s: float = SERVER_START_TIMEOUT_S) -> Iterator[str]:
    """Run `streamlit run workbench/ui/app.py` on a free 127.0.0.1 port; yield its base URL.

    The server's output goes to log_path. It is always stopped on exit (SIGTERM, then SIGKILL).
    """
    port = free_port()
    cmd = [
        sys.executable, "-m", "streamlit", "run", str(APP),
        "--server.port", str(port), "--server.address", "127.0.0.1", "--server.headless", "true",
        "--browser.gatherUsageStats", "false",
    ]
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            if proc.poll() is not None:
                pytest.fail(f"streamlit exited with code {proc.returncode} before it was healthy:\n{_tail(log_path)}")
            try:
                with urllib.request.urlopen(f"{base}/_stcore/health", timeout=2) as r:
                    if r.status == 200 and r.read().strip() == b"ok":
                        break
            except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"streamlit not healthy after {timeout_s:.0f} s on {base}:\n{_tail(log_path)}")
            time.sleep(0.25)
        yield base
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)


def server_log_tail(log_path: Path) -> str:
    return _tail(log_path)


def fail(pg, what: str, shot: str, log_path: Path):
    """Stop a browser test: a full-page screenshot under OUTPUT_DIR and the server log's tail in the message."""
    OUTPUT_DIR.mkdir(parents=True, exist_ok=True)
    pg.screenshot(path=OUTPUT_DIR / shot, full_page=True)
    raise AssertionError(f"{what} (see {OUTPUT_DIR / shot})\nserver log:\n{server_log_tail(log_path)}")


def wait_until(pg, condition, what, shot: str, log_path: Path, timeout_s: float, poll_ms: int = 100):
    """Poll condition() until it returns something truthy, and return that (bounded: a test never hangs).

    what: the failure message, or a function making it (to report the state at the deadline).
    """
    deadline = time.monotonic() + timeout_s
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            fail(pg, f"{what() if callable(what) else what} (after {timeout_s:.0f} s)", shot, log_path)
        pg.wait_for_timeout(poll_ms)


@contextlib.contextmanager
def chromium() -> Iterator:
    """Debian's Chromium, headless, launched through playwright and always closed."""
    path = require_chromium()
    with sync_playwright()() as p:
        browser = p.chromium.launch(executable_path=path, headless=True, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


@contextlib.contextmanager
def chromium_page(viewport: dict, timeout_ms: int, **context) -> Iterator:
    """One page of a fresh browser at `viewport`, with `timeout_ms` as every wait's default."""
    with chromium() as browser:
        pg = browser.new_context(viewport=viewport, **context).new_page()
        pg.set_default_timeout(timeout_ms)
        yield pg


def analysed_demo_home(root: Path, sample_fps: float, actor: str = "local") -> tuple[Path, int, str]:
    """A fresh WORKBENCH_HOME under `root` whose 2-s demo case the default detectors scored.

    Returns:
        (the home folder, the demo case's id, the demo file's sha256).
    """
    from detectors.registry import default_detectors  # lazy: the browser helpers stay light to import
    from workbench import demo
    from workbench.cases import ensure_demo_case
    from workbench.pipeline import Sampling
    from workbench.service import analyse_evidence
    from workbench.store import Store

    home = root / "home"
    (home / "demo").mkdir(parents=True)
    demo.make_demo(home / "demo" / "demo.mp4", seconds=2.0, width=640, height=360)
    store = Store(home / "workbench.db")
    try:
        case_id = ensure_demo_case(store, home / "evidence", home / "demo" / "demo.mp4")
        sha = store.case_evidence(case_id)[0]["sha256"]
        analyse_evidence(store, sha, default_detectors(), Sampling(sample_fps=sample_fps), actor=actor)
    finally:
        store.close()
    return home, case_id, sha


@contextlib.contextmanager
def served(home: Path, log_path: Path) -> Iterator[str]:
    """`streamlit run` on `home` (WORKBENCH_HOME, no other WORKBENCH_ setting); yields its base URL."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("WORKBENCH_")}
    env["WORKBENCH_HOME"] = str(home)
    env["PYTHONUNBUFFERED"] = "1"
    with streamlit_server(env, log_path) as url:
        yield url
