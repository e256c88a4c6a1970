"""PNG of the anchored section in Neuroglancer, rendered offline by headless Chromium (selenium).

Needs Debian's ``chromium`` and ``chromium-driver`` (``/usr/bin/chromium``, ``/usr/bin/chromedriver``) or
``CHROMIUM_BINARY`` / ``CHROMEDRIVER`` pointing at them, and the ``selenium`` package. WebGL runs on
SwiftShader (software), so no GPU is needed.
"""

from __future__ import annotations

import io
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from numpy.typing import ArrayLike

from siibra_anchor.cache import atomic_file

from .errors import BrowserUnavailableError, ViewerArgumentError, ViewerTimeoutError
from .serve import serve_result

__all__ = ["chromium_paths", "screenshot", "screenshot_url"]

logger = logging.getLogger(__name__)

_CHROME_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--use-angle=swiftshader",
    "--enable-unsafe-swiftshader",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-dev-shm-usage",
    "--hide-scrollbars",
)

# Hide the UI chrome so that the canvas fills the window; report readiness of all panels and layers.
_JS_HIDE_UI = """
const v = window.viewer; if (!v) return false;
v.uiConfiguration.showUIControls.value = false;
v.uiConfiguration.showPanelBorders.value = false;
if (v.uiConfiguration.showLayerPanel) v.uiConfiguration.showLayerPanel.value = false;
if (!document.getElementById("sa-hide")) {
  const st = document.createElement("style"); st.id = "sa-hide";
  st.textContent = ".neuroglancer-display-dimensions-widget, .neuroglancer-data-panel-layout-controls "
    + "{ display: none !important; }";
  document.head.appendChild(st);
}
return true;
"""
_JS_READY = "const v = window.viewer; return !!v && v.layerManager.managedLayers.length >= arguments[0] && v.isReady();"


def chromium_paths() -> tuple[str, str]:
    """``(chromium, chromedriver)`` executables, or :class:`BrowserUnavailableError` saying what to install."""
    chrome = os.environ.get("CHROMIUM_BINARY") or shutil.which("chromium") or "/usr/bin/chromium"
    driver = os.environ.get("CHROMEDRIVER") or shutil.which("chromedriver") or "/usr/bin/chromedriver"
    for p, pkg in ((chrome, "chromium"), (driver, "chromium-driver")):
        if not Path(p).is_file():
            raise BrowserUnavailableError(
                f"{p} not found; install it (Debian: apt-get install -y chromium chromium-driver) or set "
                f"{'CHROMIUM_BINARY' if pkg == 'chromium' else 'CHROMEDRIVER'}"
            )
    return chrome, driver


def screenshot_url(
    url: str,
    out_png: str | os.PathLike[str],
    size: tuple[int, int] = (800, 600),
    timeout_s: float = 60.0,
    settle_s: float = 0.5,
    min_layers: int = 1,
) -> Path:
    """Render a Neuroglancer link to a PNG with headless Chromium once all its data has loaded.

    Parameters
    ----------
    url : str
        Link to a Neuroglancer client (``...#!{state}``); for offline use, a 127.0.0.1 one.
    out_png : path
        PNG written atomically, exactly ``size`` pixels.
    size : (width, height)
        Pixels.
    timeout_s : float
        Maximum seconds to wait for the client and data (:class:`ViewerTimeoutError` after).
    settle_s : float
        The viewer must report ready for this long before capture, and two consecutive captures (0.1 s
        apart) must be identical.
    min_layers : int
        Wait until the client has at least this many layers (the state arrives asynchronously).
    """
    w, h = (int(s) for s in size)
    if w < 16 or h < 16:
        raise ViewerArgumentError(f"size must be at least (16, 16) pixels, got {size}")
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError as exc:
        raise BrowserUnavailableError("screenshots need selenium: pip install selenium") from exc
    from PIL import Image

    chrome, driver_path = chromium_paths()
    profile = tempfile.mkdtemp(prefix="siibra-anchor-chromium-")
    opts = webdriver.ChromeOptions()
    opts.binary_location = chrome
    for f in _CHROME_FLAGS:
        opts.add_argument(f)
    opts.add_argument(f"--user-data-dir={profile}")
    opts.add_argument(f"--window-size={w},{h}")
    driver = None
    try:
        try:
            driver = webdriver.Chrome(service=Service(executable_path=driver_path), options=opts)
        except Exception as exc:  # selenium raises WebDriverException subclasses
            raise BrowserUnavailableError(f"cannot start headless Chromium ({chrome}): {exc}") from exc
        driver.set_page_load_timeout(timeout_s)
        driver.get("about:blank")
        # the window size includes browser decorations: grow the window until the page is exactly w x h
        for _ in range(3):
            iw, ih = driver.execute_script("return [window.innerWidth, window.innerHeight];")
            if (iw, ih) == (w, h):
                break
            ow, oh = driver.get_window_size()["width"], driver.get_window_size()["height"]
            driver.set_window_size(ow + w - int(iw), oh + h - int(ih))
        driver.get(url)
        deadline = time.monotonic() + timeout_s
        hidden = False
        ready_since = None
        png = None
        while True:
            now = time.monotonic()
            if now > deadline:
                raise ViewerTimeoutError(
                    f"Neuroglancer did not finish loading within {timeout_s} s ({url[:120]}...); "
                    "check that the data server is reachable or raise timeout_s"
                )
            if not hidden:
                hidden = bool(driver.execute_script(_JS_HIDE_UI))
                ready_since = None
            elif driver.execute_script(_JS_READY, int(min_layers)):
                ready_since = ready_since or now
                if now - ready_since >= settle_s:
                    # ready and drawn: two consecutive captures must agree
                    shot = driver.get_screenshot_as_png()
                    if png is not None and shot == png and driver.execute_script(_JS_READY, int(min_layers)):
                        break
                    png = shot
            else:
                ready_since = None
                png = None
            time.sleep(0.1)
    finally:
        if driver is not None:
            driver.quit()
        shutil.rmtree(profile, ignore_errors=True)
    im = Image.open(io.BytesIO(png)).convert("RGB")
    if im.size != (w, h):
        logger.debug("screenshot is %s, resizing to %s", im.size, (w, h))
        canvas = Image.new("RGB", (w, h))
        canvas.paste(im.crop((0, 0, min(w, im.width), min(h, im.height))))
        im = canvas
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    out = Path(out_png)
    with atomic_file(out) as tmp:
        tmp.write_bytes(buf.getvalue())
    return out


def screenshot(
    result: Any,
    image: ArrayLike | None,
    out_png: str | os.PathLike[str],
    size: tuple[int, int] = (800, 600),
    timeout_s: float = 60.0,
    layout: str = "xy",
    margin: float = 1.25,
    **serve_kwargs: Any,
) -> Path:
    """PNG of the section in its plane inside the template, rendered offline through headless Chromium.

    Parameters
    ----------
    result : AnchoringResult
    image : (H, W) or (H, W, C) array or None
        Original section image (default ``result.image``); drawn tinted orange over the grey template.
    out_png : path
        Output PNG, ``size`` pixels, written atomically.
    size : (width, height)
        Pixels.
    timeout_s : float
        Maximum seconds to wait until every layer has loaded.
    layout : str
        Neuroglancer layout; ``"xy"`` is one cross-section in the section plane, centred on the section,
        screen right = image columns, screen down = image rows, ``margin`` x the section's larger side
        across the shorter screen side.
    **serve_kwargs
        Passed to :func:`siibra_anchor.viewer.serve.serve_result` (``mask``, ``value_range``, ``matches``...).

    Returns
    -------
    Path of the PNG.
    """
    w, h = (int(s) for s in size)
    server = serve_result(
        result,
        image,
        open_browser=False,
        layout=layout,
        viewport_px=min(w, h) // (2 if layout == "4panel" else 1),
        margin=margin,
        **serve_kwargs,
    )
    try:
        return screenshot_url(
            server.url,
            out_png,
            size=(w, h),
            timeout_s=timeout_s,
            min_layers=len(server.state.layers) if server.state is not None else 1,
        )
    finally:
        server.stop()
