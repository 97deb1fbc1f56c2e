"""The viewers as a person uses them: JupyterLab in headless Chromium (Debian's package, driven by Playwright),
notebooks 03-06 run top to bottom in the smoke profile, every viewer's controls moved; and the run's HTML viewer
opened from disk. Run after notebooks 01-05 have run in the smoke profile (`make test` runs this last; `make e2e`
runs it alone).

Each move must redraw the viewer's image within :data:`REDRAW_LIMIT_S` and name the new choice; browser console
errors fail the test. Screenshots go to ``runs/smoke/e2e/`` (not committed), failed or not.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from helpers import labels, paths, report

pytestmark = pytest.mark.e2e

#: Slowest allowed redraw after one move of a control (smoke profile).
REDRAW_LIMIT_S = 2.0
#: Notebooks run in the browser, each with one viewer.
NOTEBOOKS = ["03_lrp_zennit.ipynb", "04_gradcam.ipynb", "05_compare.ipynb", "06_known_truth.ipynb"]
#: Chromium flags for a closed network (without them it keeps trying Google's hosts) and a root user.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
#: JupyterLab settings of the test server: every cell in the page (JupyterLab 4 leaves cells out of view out of
#: the page by default), no autosave, no news fetched from the internet.
LAB_SETTINGS = {
    "@jupyterlab/notebook-extension/tracker": {"windowingMode": "none"},
    "@jupyterlab/docmanager-extension/plugin": {"autosave": False},
    "@jupyterlab/apputils-extension/notification": {"fetchNews": "false"},
}
#: The frame the HTML viewer's controls select (its page script's own state).
SHOWN_FRAME = "'data:image/jpeg;base64,' + data.frames[method.value][+image.value][+pathology.value]"
#: Console messages JupyterLab logs on a machine without internet, which say nothing of the viewers.
OFFLINE_NOISE = ("Failed to load resource", "net::ERR_")


def chromium_path() -> str:
    found = os.environ.get("CHEXPLAIN_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if not found:
        pytest.fail(
            "No Chromium for the browser test: install Debian's package (`apt-get install chromium`; .ci/run does) "
            "or point CHEXPLAIN_CHROMIUM at a Chromium binary."
        )
    return found


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def artifacts() -> Path:
    folder = paths.run_dir("smoke") / "e2e"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture(scope="module")
def lab(artifacts, tmp_path_factory):
    """A JupyterLab server on a free local port with a token, in the smoke profile; stopped afterwards.

    It serves copies of the notebooks (JupyterLab autosaves what it runs, and the committed notebooks stay without
    outputs; they find the run folder from the package's location, wherever they are) and keeps its settings and
    workspaces in a temporary folder.
    """
    if not (paths.run_dir("smoke") / "model" / "best.pt").is_file():
        pytest.fail("The smoke run has no model: run notebooks 01-02 in the smoke profile first (`make test` does).")
    root = tmp_path_factory.mktemp("lab")
    shutil.copytree(paths.NOTEBOOKS_DIR, root / "notebooks", ignore=shutil.ignore_patterns(".ipynb_checkpoints"))
    for plugin, settings in LAB_SETTINGS.items():
        target = root / "settings" / f"{plugin}.jupyterlab-settings"
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(json.dumps(settings))
    port, token = _free_port(), secrets.token_hex(16)
    command = [
        *(sys.executable, "-m", "jupyter", "lab", "--no-browser", f"--port={port}", "--ip=127.0.0.1"),
        *(f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}", "--ServerApp.allow_root=True"),
        *(f"--LabApp.user_settings_dir={root / 'settings'}", f"--LabApp.workspaces_dir={root / 'workspaces'}"),
    ]
    env = {**os.environ, "CHEXPLAIN_PROFILE": "smoke"}
    log = open(artifacts / "jupyterlab.log", "w")  # noqa: SIM115 (closed with the server)
    server = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        _wait_for(f"{base}/api/status?token={token}", server)
        yield base, token
    finally:
        server.terminate()
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()


def _wait_for(url: str, server: subprocess.Popen, timeout: float = 120) -> None:
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if server.poll() is not None:
            pytest.fail(f"JupyterLab exited with {server.returncode}; see runs/smoke/e2e/jupyterlab.log")
        try:
            with urllib.request.urlopen(url, timeout=5):
                return
        except OSError:
            time.sleep(1)
    pytest.fail(f"JupyterLab did not answer within {timeout} s; see runs/smoke/e2e/jupyterlab.log")


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as driver:
        chromium = driver.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_ARGS, headless=True)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser):
    """A page whose console errors are collected (and asserted empty by each test)."""
    context = browser.new_context(viewport={"width": 1024, "height": 900})  # a laptop's window
    page = context.new_page()
    page.console_errors = []
    page.on(
        "console",
        lambda message: (
            message.type == "error"
            and not message.text.startswith(OFFLINE_NOISE)
            and page.console_errors.append(message.text)
        ),
    )
    page.on("pageerror", lambda error: page.console_errors.append(str(error)))
    yield page
    context.close()


def _image_source(page) -> str:
    return page.locator(".widget-image").last.get_attribute("src") or ""


def _timed_redraw(page, move, what: str) -> float:
    """Make one move and wait for the viewer's image to change; the seconds it took."""
    before = _image_source(page)
    start = time.monotonic()
    move()
    page.wait_for_function(
        "before => { const images = document.querySelectorAll('.widget-image');"
        " return images.length && images[images.length - 1].getAttribute('src') !== before; }",
        arg=before,
        timeout=30_000,
    )
    seconds = time.monotonic() - start
    assert seconds <= REDRAW_LIMIT_S, f"{what}: the redraw took {seconds:.2f} s (limit {REDRAW_LIMIT_S} s)"
    return seconds


def _step(handle) -> None:
    """Move a slider one step with the keyboard, as a person would: right, or left from its last position."""
    at_end = handle.get_attribute("aria-valuenow") == handle.get_attribute("aria-valuemax")
    handle.focus()
    handle.press("ArrowLeft" if at_end else "ArrowRight")


def _assert_every_name_shown_whole(handle, readout) -> list[str]:
    """Walk the pathology slider from its first position to its last, one key press at a time, waiting after each
    for the label beside it to change (so no press races the kernel's echo), and check that the label shows every
    name whole, not clipped; the names seen."""
    from playwright.sync_api import expect

    handle.focus()
    if handle.get_attribute("aria-valuenow") != handle.get_attribute("aria-valuemin"):
        shown = readout.inner_text()
        handle.press("Home")
        expect(readout).not_to_have_text(shown, timeout=10_000)
    names = []
    for _ in range(len(labels.PATHOLOGIES)):
        names.append(readout.inner_text())
        clipped = readout.evaluate("element => element.scrollWidth > element.clientWidth + 1")
        assert not clipped, f"the pathology label clips {names[-1]!r}"
        if handle.get_attribute("aria-valuenow") == handle.get_attribute("aria-valuemax"):
            break
        handle.press("ArrowRight")
        expect(readout).not_to_have_text(names[-1], timeout=10_000)
    return names


def _run_all(page, base: str, token: str, notebook: str) -> None:
    """Open the notebook, wait for its kernel, and run every cell (Run > Run All Cells)."""
    # a workspace of its own, reset: JupyterLab would reopen the notebooks of the previous test beside it
    page.goto(f"{base}/lab/workspaces/e2e-{notebook[:2]}/tree/notebooks/{notebook}?token={token}&reset")
    page.locator(".jp-Notebook").first.wait_for(timeout=120_000)
    page.get_by_text(re.compile(r"\| Idle$")).first.wait_for(timeout=120_000)
    page.locator(".lm-MenuBar-itemLabel", has_text=re.compile("^Run$")).click()
    page.locator("li[data-command='runmenu:run-all']").click()


@pytest.mark.parametrize("notebook", NOTEBOOKS)
def test_notebook_viewer_in_jupyterlab(lab, page, artifacts, notebook):
    base, token = lab
    _run_all(page, base, token, notebook)
    viewer = page.locator(".widget-vbox").last
    try:
        viewer.wait_for(timeout=600_000)  # every cell above the viewer runs first (05: about 2 min in smoke)
        page.locator(".widget-image").last.wait_for(timeout=60_000)
        assert page.get_by_text("Error displaying widget").count() == 0
        assert page.locator(".jp-OutputArea-output pre", has_text="VBox(children=").count() == 0, "plain-text repr"
        pathology = viewer.locator(".widget-hslider").first
        readout = viewer.locator(".pathology-name")
        first_name = readout.inner_text()
        handle = pathology.locator(".noUi-handle")
        times = [_timed_redraw(page, lambda: _step(handle), "pathology slider")]
        from playwright.sync_api import expect

        expect(readout).not_to_have_text(first_name, timeout=10_000)  # the label names the new pathology
        image_slider = viewer.locator(".widget-hslider").nth(1)
        assert image_slider.bounding_box()["width"] >= 250, "the image slider keeps its width in a 1024-px window"
        image_handle = image_slider.locator(".noUi-handle")
        times.append(
            _timed_redraw(page, lambda: (image_handle.focus(), image_handle.press("ArrowRight")), "image slider")
        )
        picker = viewer.locator("select").first
        options = picker.locator("option").all_inner_texts()
        times.append(_timed_redraw(page, lambda: picker.select_option(options[-1]), "method picker"))
        names = _assert_every_name_shown_whole(handle, readout)
        if notebook != "06_known_truth.ipynb":  # 06 shows three pathologies, 03-05 all 14
            assert "Enlarged Cardiomediastinum" in names and len(names) == len(labels.PATHOLOGIES), names
        (artifacts / f"{notebook}.redraw.txt").write_text(" ".join(f"{t:.2f}" for t in times) + "\n")
    finally:
        page.screenshot(path=str(artifacts / f"{notebook}.png"), full_page=True)
    assert page.console_errors == [], page.console_errors


def test_html_viewer_opens_from_disk_and_its_controls_move(page, artifacts):
    path = report.write_html_viewer("smoke", n_images=4)
    page.goto(path.as_uri())
    try:
        for control, readout in (("#pathology", "#pathology-name"), ("#image", "#image-name")):
            before = page.locator(readout).inner_text()
            page.locator(control).focus()
            page.keyboard.press("ArrowRight")
            assert page.locator(readout).inner_text() != before, f"{control} moved on"
            assert page.locator("#frame").get_attribute("src") == page.evaluate(SHOWN_FRAME)
        page.locator("#method").select_option(index=1)
        method = page.locator("#method").input_value()
        assert (
            page.locator("#caption")
            .inner_text()
            .startswith(f"{method}: {page.locator('#pathology-name').inner_text()}")
        )
        assert page.locator("#frame").get_attribute("src") == page.evaluate(SHOWN_FRAME)
    finally:
        page.screenshot(path=str(artifacts / "viewer.html.png"), full_page=True)
    assert page.console_errors == [], page.console_errors
