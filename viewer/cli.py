"""``siibra-anchor view RESULT.json [--image IMG] [--screenshot out.png] [--no-browser] [--port N]``.

:func:`add_view_arguments` declares the options on an ``argparse`` (sub)parser; :func:`view_main` runs them.
"""

from __future__ import annotations

import argparse
import logging
import sys
import threading
from pathlib import Path
from typing import Any

from siibra_anchor.errors import SectionFileNotFoundError

__all__ = ["add_view_arguments", "load_image_for", "view_main"]

logger = logging.getLogger(__name__)


def add_view_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the ``view`` options (``result``, ``--image``, ``--screenshot``, ``--no-browser``, ``--port``...)."""
    parser.add_argument("result", help="anchoring result JSON (AnchoringResult.save)")
    parser.add_argument("--image", default=None, help="the section image (default: section path in the result)")
    parser.add_argument("--screenshot", default=None, metavar="PNG", help="render a PNG headless and exit")
    parser.add_argument("--size", default="800x600", help="screenshot size WxH in pixels (default 800x600)")
    parser.add_argument("--no-browser", action="store_true", help="do not open a web browser")
    parser.add_argument("--port", type=int, default=0, help="port of the local viewer on 127.0.0.1 (0 = free)")
    parser.add_argument("--no-matches", action="store_true", help="do not draw the patch matches")
    parser.add_argument("--timeout", type=float, default=60.0, help="screenshot timeout in seconds")
    return parser


def load_image_for(result: Any, image_path: str | Path | None):
    """Original section image (H, W[, C]) for ``result``: from ``image_path``, else ``section['path']``.

    Returns None when neither is given (only the outline and matches are then drawn).
    """
    from siibra_anchor.section import Section

    path = image_path or result.section.get("path")
    if not path:
        return None
    p = Path(path)
    if not p.exists():
        raise SectionFileNotFoundError(f"section image {p} does not exist; pass --image PATH")
    spacing = result.section.get("spacing_mm") or [float(s) for s in result.pixel_spacing_mm]
    return Section.from_file(p, spacing_mm=spacing).image


def view_main(args: argparse.Namespace) -> int:
    """Run ``siibra-anchor view``: serve the viewer offline (and open it), or write ``--screenshot``.

    Parameters
    ----------
    args : argparse.Namespace
        ``result`` (path), ``image`` (path or None), ``screenshot`` (path or None), ``no_browser`` (bool),
        ``port`` (int); optional ``size`` ("WxH"), ``no_matches``, ``timeout``.

    Returns
    -------
    int exit code (0).
    """
    from siibra_anchor.result import AnchoringResult

    from .errors import ViewerArgumentError

    rpath = Path(args.result)
    if not rpath.is_file():
        raise SectionFileNotFoundError(f"result file {rpath} does not exist")
    result = AnchoringResult.load(rpath)
    image = load_image_for(result, getattr(args, "image", None))
    matches = not getattr(args, "no_matches", False)
    if getattr(args, "screenshot", None):
        from .screenshot import screenshot

        size_s = str(getattr(args, "size", "800x600") or "800x600")
        try:
            w, h = (int(v) for v in size_s.lower().split("x"))
        except ValueError as exc:
            raise ViewerArgumentError(f"--size must look like 800x600, got {size_s!r}") from exc
        out = screenshot(
            result,
            image,
            args.screenshot,
            size=(w, h),
            timeout_s=float(getattr(args, "timeout", 60.0)),
            matches=matches,
        )
        sys.stdout.write(f"{out}\n")
        return 0
    from .serve import serve_result

    server = serve_result(
        result,
        image,
        open_browser=not getattr(args, "no_browser", False),
        port=int(getattr(args, "port", 0) or 0),
        matches=matches,
    )
    sys.stdout.write(f"Neuroglancer: {server.url}\n(serving offline on 127.0.0.1; Ctrl-C to stop)\n")
    sys.stdout.flush()
    import signal

    if threading.current_thread() is threading.main_thread():  # SIGTERM: stop cleanly (temp data removed)
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    server.wait()
    return 0


def main(argv: list[str] | None = None) -> int:  # pragma: no cover - convenience entry point
    """``python -m siibra_anchor.viewer.cli RESULT.json ...``."""
    parser = add_view_arguments(argparse.ArgumentParser(prog="siibra-anchor view"))
    return view_main(parser.parse_args(argv))


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
