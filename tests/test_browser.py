"""JupyterLab in a real browser: every executed notebook of the course shows all its figures,
and the slice viewer's slider changes its image.

Marked ``browser`` and left out of ``make test`` (pyproject's addopts say ``-m 'not browser'``);
``make test-browser`` runs them. They drive Debian's ``chromium`` headless through its
``chromium-driver`` with Selenium, pointed at the driver by path so that Selenium Manager never
downloads anything; ``.ci/run`` installs both packages when they are missing. JupyterLab runs
on 127.0.0.1 on a free port, with a token, in a temporary root, settings and workspace folder.

The course's notebooks are opened as ``make run`` left them in ``$RUNS/notebooks/`` (``RUNS`` as
in the Makefile, default ``runs``): every image must load (natural size above zero), and a
full-page screenshot of each notebook goes to ``$RUNS/browser/<notebook>.png``. When that folder
has no executed notebook, each notebook is executed here first in smoke mode on a tiny phantom,
and its screenshot goes to ``$RUNS/browser/smoke/``. A folder with only some of them fails,
naming the missing ones. Every screenshot's path is printed.
"""

from __future__ import annotations

import base64
import io
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import nbformat
import pytest

from ichlib.io.atomic import atomic_path
from ichlib.viz.check import DISPLAY_WIDTH_PX

pytestmark = [pytest.mark.browser, pytest.mark.timeout(600)]

ROOT = Path(__file__).resolve().parents[1]
RUNS = ROOT / os.environ.get("RUNS", "runs")  # `make test-browser RUNS=...` as for `make run`
SHOTS = RUNS / "browser"
#: The course's notebooks, by file name (their executed copies have the same names).
COURSE = sorted(p.name for p in (ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
IMAGE_TYPES = ("image/png", "image/jpeg", "image/gif", "image/svg+xml")
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--disable-dev-shm-usage", "--window-size=1500,1100")
# The bytes behind a loaded <img> (the widget's blob: URL), base64; null while not loaded.
IMG_BYTES_JS = """
const img = arguments[0], done = arguments[arguments.length - 1];
if (!img.complete || img.naturalWidth === 0 || !img.src) { done(null); return; }
fetch(img.src).then(r => r.arrayBuffer()).then(buffer => {
  const bytes = new Uint8Array(buffer);
  let text = '';
  for (let i = 0; i < bytes.length; i += 0x8000)
    text += String.fromCharCode.apply(null, bytes.subarray(i, i + 0x8000));
  done(btoa(text));
}).catch(() => done(null));
"""
# The id of the notebook panel showing arguments[0], once it is current and its kernel idle.
NOTEBOOK_READY_JS = """
const app = window.jupyterapp, panel = app && app.shell.currentWidget;
if (!panel || !panel.context || panel.context.path !== arguments[0]) return null;
const session = panel.sessionContext && panel.sessionContext.session;
return session && session.kernel && session.kernel.status === 'idle' ? panel.id : null;
"""


@dataclass
class Lab:
    """A running JupyterLab server."""

    root: Path
    base: str
    token: str
    log: Path

    def url(self, notebook: str) -> str:
        """The notebook alone in a fresh workspace named after it (no tabs from other tests)."""
        return (f"{self.base}/lab/workspaces/{Path(notebook).stem}/tree/{notebook}"
                f"?reset&token={self.token}")

    def api(self, path: str, method: str = "GET") -> object:
        request = urllib.request.Request(f"{self.base}/api/{path}", method=method,
                                         headers={"Authorization": f"token {self.token}"})
        with urllib.request.urlopen(request, timeout=10) as response:
            body = response.read()
        return json.loads(body) if body else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _kernel_env() -> dict[str, str]:
    """This environment, with the inline backend left on and this checkout's ichlib first."""
    env = {k: v for k, v in os.environ.items() if k not in ("MPLBACKEND", "ICHLIB_VIEWER")}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    return env


def _write_lab_settings(settings: Path) -> None:
    """No news, no update check, no toasts: nothing reaches the network or covers the page. Every
    cell of a notebook is attached and drawn (windowing off), so all its images load at once."""
    path = settings / "@jupyterlab" / "apputils-extension" / "notification.jupyterlab-settings"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"fetchNews": "false", "checkForUpdates": False,
                                "doNotDisturbMode": True}))
    tracker = settings / "@jupyterlab" / "notebook-extension" / "tracker.jupyterlab-settings"
    tracker.parent.mkdir(parents=True)
    tracker.write_text(json.dumps({"windowingMode": "none"}))


def _wait(what: str, check: Callable[[], object], timeout: float, log: Path | None = None):
    """Poll ``check`` until it returns something truthy; fail naming ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.25)
    tail = f"\n--- {log} ---\n{log.read_text()[-3000:]}" if log and log.exists() else ""
    pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}{tail}")


@pytest.fixture(scope="module")
def lab(tmp_path_factory) -> Iterator[Lab]:
    root = tmp_path_factory.mktemp("lab")
    home = tmp_path_factory.mktemp("lab-state")
    _write_lab_settings(home / "settings")
    port, token = _free_port(), secrets.token_hex(16)
    log = home / "server.log"
    cmd = [sys.executable, "-m", "jupyter", "lab", "--no-browser", "--ServerApp.ip=127.0.0.1",
           f"--ServerApp.port={port}", "--ServerApp.port_retries=0",
           f"--ServerApp.root_dir={root}", f"--IdentityProvider.token={token}",
           "--LabApp.expose_app_in_browser=True", f"--LabApp.user_settings_dir={home / 'settings'}",
           f"--LabApp.workspaces_dir={home / 'workspaces'}",
           "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
           "--LabApp.extension_manager=readonly"]
    if os.geteuid() == 0:  # CI containers run as root
        cmd.append("--ServerApp.allow_root=True")
    env = _kernel_env() | {"JUPYTER_RUNTIME_DIR": str(home / "runtime")}
    with open(log, "w") as out:
        server = subprocess.Popen(cmd, cwd=root, env=env, stdout=out, stderr=subprocess.STDOUT,
                                  start_new_session=True)
    lab = Lab(root=root, base=f"http://127.0.0.1:{port}", token=token, log=log)

    def up() -> bool:
        if server.poll() is not None:
            pytest.fail(f"JupyterLab exited with {server.returncode}:\n{log.read_text()[-3000:]}")
        try:
            return lab.api("status") is not None
        except (urllib.error.URLError, OSError):
            return False

    try:
        _wait("JupyterLab to answer", up, 120, log)
        yield lab
    finally:
        _stop(lab, server)


def _stop(lab: Lab, server: subprocess.Popen) -> None:
    """Shut the kernels down through the API, then the server (its process group)."""
    try:
        for kernel in lab.api("kernels") or []:
            lab.api(f"kernels/{kernel['id']}", method="DELETE")
    except (urllib.error.URLError, OSError):
        pass
    if server.poll() is None:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait(10)


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not Path(p).is_file()]
    if missing:
        pytest.fail(f"{', '.join(missing)} not found: install Debian's browser with "
                    "`apt-get install -y chromium chromium-driver` (.ci/run does this)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}")
    log = tmp_path_factory.mktemp("chromedriver") / "chromedriver.log"
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER, log_output=str(log)),
                              options=options)
    driver.set_page_load_timeout(120)
    try:
        yield driver
    finally:
        driver.quit()


# The viewer notebook's code; the test runs it too, to know what each slice must look like.
VIEWER_CODE = """\
import numpy as np
from scipy import ndimage
from ichlib.synthetic.phantom import make_phantom
from ichlib.viz.figures import SYNTHETIC_NOTE
from ichlib.viz.viewer import SliceViewer
p = make_phantom(np.random.default_rng(0), size=64, n_slices=16,
                 subtypes=('subdural', 'intraparenchymal'))
cam = ndimage.gaussian_filter(p.mask.astype(np.float32), (0.7, 3, 3))  # a stand-in for Grad-CAM
cam /= cam.max()
viewer = SliceViewer(p, mask=p.mask, cam=cam, labels=p.slice_labels, name='phantom',
                     note=SYNTHETIC_NOTE)"""


def _notebook(path: Path, *sources: str) -> Path:
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.cells = [nbformat.v4.new_code_cell(src) for src in sources]
    nbformat.write(nb, path)
    return path


def _save_screenshot(driver, name: str) -> Path:
    path = SHOTS / name
    with atomic_path(path, suffix=".png") as tmp:
        tmp.write_bytes(driver.get_screenshot_as_png())
    return path


def _report(capsys, line: str) -> None:
    with capsys.disabled():
        print(f"\n{line}")


def test_executed_notebook_shows_its_figures_as_images(lab, browser, monkeypatch, capsys):
    import papermill
    from selenium.webdriver.common.by import By

    for name in ("MPLBACKEND", "ICHLIB_VIEWER"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("PYTHONPATH", _kernel_env()["PYTHONPATH"])
    source = _notebook(
        lab.root / "figures_in.ipynb",
        "import matplotlib.pyplot as plt\nimport numpy as np\n"
        "fig, ax = plt.subplots(figsize=(4, 3))\nax.plot(np.sin(np.linspace(0, 6, 50)))\nplt.show()",
        "from ichlib.synthetic import make_phantom\nfrom ichlib.viz import SliceViewer\n"
        "p = make_phantom(np.random.default_rng(0), size=64, n_slices=12, subtypes=('subdural',))\n"
        "SliceViewer(p, mask=p.mask, labels=p.slice_labels, note='SYNTHETIC phantom')")
    executed = lab.root / "figures.ipynb"
    papermill.execute_notebook(str(source), str(executed), kernel_name="python3",
                               progress_bar=False, cwd=str(lab.root))
    cells = nbformat.read(executed, as_version=4).cells
    pngs = [sum("image/png" in out.get("data", {}) for out in cell.outputs) for cell in cells]
    assert pngs == [1, 1], f"image/png outputs per cell: {pngs}"  # the plot; the static montage

    browser.get(lab.url(executed.name))
    panel = _wait(f"{executed.name} to open", lambda: browser.execute_script(
        NOTEBOOK_READY_JS, executed.name), 120, lab.log)

    def rendered() -> list:
        imgs = browser.find_elements(By.CSS_SELECTOR, f"[id='{panel}'] .jp-OutputArea-output img")
        sizes = [browser.execute_script("return [arguments[0].naturalWidth, arguments[0].naturalHeight]",
                                        img) for img in imgs]
        return sizes if len(sizes) == sum(pngs) and all(w > 0 and h > 0 for w, h in sizes) else []

    sizes = _wait(f"{sum(pngs)} rendered <img> outputs in {executed.name}", rendered, 120, lab.log)
    assert sizes[0][0] >= 200 and sizes[1][0] >= 600  # the plot, then the wider montage
    _report(capsys, f"executed notebook screenshot: {_save_screenshot(browser, 'executed_notebook.png')}")


def _img_bytes(driver, img) -> bytes | None:
    data = driver.execute_async_script(IMG_BYTES_JS, img)
    return base64.b64decode(data) if data else None


def test_slice_viewer_slider_changes_the_image(lab, browser, capsys):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    expected: dict = {}
    exec(VIEWER_CODE, expected)  # the same viewer, here: its PNG of each slice
    viewer = expected["viewer"]
    _notebook(lab.root / "viewer.ipynb", VIEWER_CODE + "\nviewer")
    browser.get(lab.url("viewer.ipynb"))
    panel = _wait("viewer.ipynb to open with an idle kernel",
                  lambda: browser.execute_script(NOTEBOOK_READY_JS, "viewer.ipynb"), 120, lab.log)
    browser.execute_script("window.jupyterapp.commands.execute('notebook:run-all-cells')")

    inside = f"[id='{panel}']"
    frame = _wait("the viewer's image", lambda: browser.find_elements(
        By.CSS_SELECTOR, f"{inside} img.ichlib-frame"), 180, lab.log)[0]
    readout = browser.find_element(By.CSS_SELECTOR, f"{inside} .ichlib-slice .widget-readout")
    def reading() -> str:
        text = browser.execute_script("return arguments[0].textContent", readout).strip()
        return text if text.isdigit() else ""

    start = int(_wait("the slider's readout", reading, 30, lab.log))
    before = _wait(f"the image of slice {start}",
                   lambda: _img_bytes(browser, frame) == viewer.render_png(start - 1), 60, lab.log)
    handle = browser.find_element(By.CSS_SELECTOR, f"{inside} .ichlib-slice .noUi-handle")
    browser.execute_script("arguments[0].scrollIntoView({block: 'center'}); arguments[0].focus()",
                           handle)
    steps = 2  # towards the scan's middle, where the lesions are
    key, moved = ((Keys.ARROW_RIGHT, start + steps) if start <= viewer.n_slices // 2 + steps
                  else (Keys.ARROW_LEFT, start - steps))
    for _ in range(steps):
        handle.send_keys(key)
    _wait(f"the slider to read {moved}", lambda: reading() == str(moved), 30, lab.log)
    want = viewer.render_png(moved - 1)
    assert want != viewer.render_png(start - 1)
    _wait(f"the image to become slice {moved}'s (it was slice {start}'s)",
          lambda: _img_bytes(browser, frame) == want, 60, lab.log)
    size = browser.execute_script("return [arguments[0].naturalWidth, arguments[0].naturalHeight]",
                                  frame)
    assert before and size[0] > 300 and size[1] > 300
    shot = _save_screenshot(browser, "slice_viewer.png")
    assert shot.stat().st_size > 10_000
    _report(capsys, f"slice viewer screenshot (slice {start} -> {moved}): {shot}")


# --- the course's executed notebooks ----------------------------------------------------------

# The notebook's scrolling element and, in viewport pixels, its box and its full height.
SCROLLER_JS = """
const panel = document.getElementById(arguments[0]);
const notebook = panel && panel.querySelector('.jp-Notebook');
if (!notebook) return null;
const scrolls = el => el.scrollHeight > el.clientHeight + 1 &&
                      ['auto', 'scroll'].includes(getComputedStyle(el).overflowY);
const el = [notebook, ...notebook.querySelectorAll('*')].find(scrolls) || notebook;
el.setAttribute('data-ichlib-scroller', '1');
const r = el.getBoundingClientRect();
return [r.left, r.top, el.clientWidth, el.clientHeight, el.scrollHeight];
"""
# Every <img> of the notebook's outputs: natural and shown size, and whether it has loaded.
IMAGES_JS = """
return Array.from(document.querySelectorAll(`[id='${arguments[0]}'] .jp-OutputArea-output img`))
  .map(img => [img.complete, img.naturalWidth, img.naturalHeight, img.clientWidth]);
"""
OUTPUT_WIDTH_JS = """
const out = document.querySelector(`[id='${arguments[0]}'] .jp-OutputArea-output`);
return out ? out.clientWidth : 0;
"""


@dataclass
class Executed:
    """Where the course's executed notebooks come from for this session."""

    folder: Path
    smoke: bool
    phantom: Path | None = None
    runs: Path | None = None


@pytest.fixture(scope="module")
def executed(tmp_path_factory) -> Executed:
    """``$RUNS/notebooks`` from ``make run``; when it has none, a smoke run made notebook by
    notebook (:func:`_executed_notebook`). Some but not all: a failure naming the missing ones."""
    folder = RUNS / "notebooks"
    found = [name for name in COURSE if (folder / name).is_file()]
    if found and len(found) < len(COURSE):
        missing = ", ".join(sorted(set(COURSE) - set(found)))
        pytest.fail(f"{folder} lacks {missing}: `make run` stopped early? Run `make run` again "
                    "(or remove the folder: the notebooks are then executed here in smoke mode)")
    if found:
        return Executed(folder, smoke=False)
    from ichlib.synthetic.writer import write_synthetic_ct_ich

    phantom = write_synthetic_ct_ich(tmp_path_factory.mktemp("phantom"), n_patients=12, size=96, seed=1)
    return Executed(tmp_path_factory.mktemp("executed"), smoke=True, phantom=phantom,
                    runs=tmp_path_factory.mktemp("smoke-runs"))


def _executed_notebook(executed: Executed, name: str, monkeypatch) -> Path:
    """The executed notebook ``name``; in a smoke session, executed now (04 before 05, as the
    tests run in name order)."""
    path = executed.folder / name
    if not executed.smoke:
        return path
    import papermill

    for var in ("MPLBACKEND", "ICHLIB_VIEWER"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("TQDM_DISABLE", "1")
    data = {} if name.startswith("06") else {"DATA_DIR": str(executed.phantom)}
    papermill.execute_notebook(
        str(ROOT / "notebooks" / name), str(path), kernel_name="python3", progress_bar=False,
        parameters={**data, "FIGURES_DIR": str(executed.runs / "figures"), "RUNS_DIR": str(executed.runs),
                    "SMOKE": True}, cwd=str(executed.runs))
    return path


def _image_outputs(path: Path) -> int:
    cells = nbformat.read(path, as_version=4).cells
    return sum(any(kind in out.get("data", {}) for kind in IMAGE_TYPES)
               for cell in cells for out in cell.get("outputs", []))


def _full_page(driver, panel: str) -> tuple[object, int]:
    """The whole notebook as one image: its scrolling element shot screen by screen, stitched.

    Returns:
        The PIL image and the number of screens it took.
    """
    from PIL import Image

    left, top, width, height, total = (int(round(v)) for v in driver.execute_script(SCROLLER_JS, panel))
    edge = 4  # the toolbar's border lies on the scroller's first rows: screens overlap by this much
    page = Image.new("RGB", (width, total), "white")
    screens, offset = 0, 0
    while True:
        shown = int(driver.execute_script(
            "const el = document.querySelector('[data-ichlib-scroller]'); el.scrollTop = arguments[0];"
            "return new Promise(done => requestAnimationFrame(() => requestAnimationFrame("
            "() => done(el.scrollTop))));", offset))
        time.sleep(0.2)
        shot = Image.open(io.BytesIO(driver.get_screenshot_as_png())).convert("RGB")
        page.paste(shot.crop((left, top + edge, left + width, top + height)), (0, shown + edge))
        screens += 1
        if shown + height >= total or offset >= total:
            return page, screens
        offset = shown + height - edge


@pytest.mark.parametrize("name", COURSE, ids=[Path(n).stem for n in COURSE])
def test_every_figure_of_the_executed_notebook_loads(name, executed, lab, browser, monkeypatch, capsys):
    """Opened in JupyterLab, every image output of the notebook has loaded (natural size above 0),
    the output area is at least as wide as the figure checks assume, and a full-page screenshot
    is saved."""
    path = _executed_notebook(executed, name, monkeypatch)
    expected = _image_outputs(path)
    assert expected > 0, f"{path} has no image output: was it executed?"
    shutil.copy(path, lab.root / name)
    browser.get(lab.url(name))
    panel = _wait(f"{name} to open", lambda: browser.execute_script(NOTEBOOK_READY_JS, name), 180, lab.log)

    def loaded() -> list:
        images = browser.execute_script(IMAGES_JS, panel)
        return images if len(images) >= expected and all(ok and w > 0 and h > 0 for ok, w, h, _ in images) else []

    try:
        images = _wait(f"{expected} loaded images in {name}", loaded, 120, lab.log)
    except pytest.fail.Exception:
        images = browser.execute_script(IMAGES_JS, panel)
        broken = [i for i, (ok, w, h, _) in enumerate(images) if not (ok and w > 0 and h > 0)]
        pytest.fail(f"{name}: {len(images)} <img> for {expected} image outputs; not loaded: {broken}")
    assert len(images) == expected, f"{name}: {len(images)} <img> for {expected} image outputs"
    width = browser.execute_script(OUTPUT_WIDTH_JS, panel)
    assert width >= DISPLAY_WIDTH_PX, (f"the output area is {width} px wide; ichlib.viz.check sizes "
                                       f"text for {DISPLAY_WIDTH_PX} px")
    page, screens = _full_page(browser, panel)
    shot = SHOTS / ("smoke" if executed.smoke else "") / f"{Path(name).stem}.png"
    with atomic_path(shot, suffix=".png") as tmp:
        page.save(tmp)
    assert page.height > 1000 and shot.stat().st_size > 20_000
    shrunk = min(shown / natural for _, natural, _, shown in images)
    _report(capsys, f"{name}{' (smoke run)' if executed.smoke else ''}: {len(images)} images loaded, "
                    f"output area {width} px, narrowest image shown at {shrunk:.0%}; "
                    f"full page ({page.width}x{page.height}, {screens} screens): {shot}")
