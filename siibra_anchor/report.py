"""Self-contained HTML quality-control report of a series of anchored sections.

One file, no external URL: PNG images are embedded as base64 ``data:`` URIs, CSS and the sorting script
are inline, so the page opens offline in any browser. It holds a 3D overview of where the sections lie in
the brain, and a table (low confidence first, sortable by clicking a column header) with each section's
confidence, flags, position and a QC thumbnail (:func:`siibra_anchor.qc.qc_thumbnail`).
"""

from __future__ import annotations

import base64
import html
import io
import logging
from collections.abc import Sequence
from datetime import datetime, timezone
from os import PathLike
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray

from .errors import AnchorError, InvalidParameterError, InvalidSectionError

if TYPE_CHECKING:
    from .result import AnchoringResult
    from .section import Section

__all__ = ["write_series_report", "series_overview", "report_rows"]

log = logging.getLogger(__name__)


def _png_data_uri(rgb: NDArray) -> str:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.asarray(rgb, np.uint8)).save(buf, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _fig_data_uri(fig: Any, dpi: int) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _tissue_points(result: AnchoringResult, mask: NDArray | None, factor: int, n: int = 600) -> NDArray:
    """(N, 3) world mm of up to ``n`` tissue pixels (display grid of block ``factor``), else the image corners."""
    if mask is not None and mask.any():
        rr, cc = np.nonzero(mask)
        step = max(1, rr.size // n)
        return result.to_points(rr[::step] * factor + (factor - 1) / 2.0, cc[::step] * factor + (factor - 1) / 2.0)
    h, w = (int(v) for v in result.section.get("shape", (1, 1))[:2])
    return result.to_points([0, 0, h - 1, h - 1], [0, w - 1, w - 1, 0])


def series_overview(
    results: Sequence[AnchoringResult],
    points: Sequence[NDArray],
    reference_volume: Any = None,
    labels: Sequence[str] | None = None,
):
    """Static 3D plot of where the sections lie: a matplotlib Figure with a 3D view and two projections.

    points : per section (N_i, 3) world mm of its tissue; drawn coloured by confidence (red = 0, green = 1)
    over the outline of the reference brain (when a volume is available), labelled ``labels`` (default 1..n).
    """
    from matplotlib import colormaps
    from matplotlib.figure import Figure

    from .errors import SpaceUnavailableError
    from .qc import reference_volume_of

    brain = np.zeros((0, 3))
    if results:
        try:
            data, vaff = reference_volume_of(results[0], reference_volume)
            sub = np.asarray(data[::4, ::4, ::4], np.float32)
            pos = sub[sub > 0]
            if pos.size:
                from scipy import ndimage

                m = sub > 0.05 * float(np.percentile(pos, 99))
                edge = m & ~ndimage.binary_erosion(m)
                ijk = np.argwhere(edge) * 4.0
                brain = ijk @ vaff[:3, :3].T + vaff[:3, 3]
                brain = brain[:: max(1, len(brain) // 3000)]
        except (SpaceUnavailableError, InvalidSectionError) as exc:
            log.info("no brain outline in the overview: %s", exc)
    cmap = colormaps["RdYlGn"]
    labels = list(labels) if labels is not None else [str(i + 1) for i in range(len(results))]
    fig = Figure(figsize=(13, 4.4))
    ax3 = fig.add_subplot(1, 3, 1, projection="3d")
    ax_s = fig.add_subplot(1, 3, 2)
    ax_a = fig.add_subplot(1, 3, 3)
    if len(brain):
        ax3.scatter(brain[:, 0], brain[:, 1], brain[:, 2], s=0.5, c="0.75", alpha=0.25, linewidths=0)
        ax_s.scatter(brain[:, 1], brain[:, 2], s=0.5, c="0.8", linewidths=0)
        ax_a.scatter(brain[:, 0], brain[:, 1], s=0.5, c="0.8", linewidths=0)
    for res, pts, lab in zip(results, points, labels, strict=True):
        col = cmap(float(res.confidence))
        ax3.scatter(pts[:, 0], pts[:, 1], pts[:, 2], s=1.5, color=col, linewidths=0)
        c = pts.mean(axis=0)
        ax3.text(c[0], c[1], c[2], lab, fontsize=8)
        ax_s.scatter(pts[:, 1], pts[:, 2], s=1.5, color=col, linewidths=0)
        ax_s.annotate(lab, (c[1], c[2]), fontsize=8, ha="center")
        ax_a.scatter(pts[:, 0], pts[:, 1], s=1.5, color=col, linewidths=0)
        ax_a.annotate(lab, (c[0], c[1]), fontsize=8, ha="center")
    ax3.set_xlabel("x (mm, R+)")
    ax3.set_ylabel("y (mm, A+)")
    ax3.set_zlabel("z (mm, S+)")
    ax3.set_title("3D", fontsize=9)
    ax_s.set_xlabel("y (mm, anterior +)")
    ax_s.set_ylabel("z (mm, superior +)")
    ax_s.set_title("seen from the right (sagittal projection)", fontsize=9)
    ax_a.set_xlabel("x (mm, right +)")
    ax_a.set_ylabel("y (mm, anterior +)")
    ax_a.set_title("seen from above (axial projection)", fontsize=9)
    for ax in (ax_s, ax_a):
        ax.set_aspect("equal", adjustable="datalim")
        ax.grid(alpha=0.3)
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    fig.colorbar(ScalarMappable(Normalize(0, 1), cmap), ax=[ax_s, ax_a], label="confidence", shrink=0.8)
    return fig


def report_rows(
    results: Sequence[AnchoringResult],
    sections: Sequence[Section | None] | None = None,
    reference_volume: Any = None,
    thumb_px: int = 150,
) -> list[dict[str, Any]]:
    """One dict per section (index, name, confidence, flags, position text, inliers, agreement, thumbnail
    RGB array or None, tissue points in mm), in the order of ``results``."""
    from .qc import plane_agreement, plane_position, qc_thumbnail, section_flags, small_panels

    rows = []
    for i, res in enumerate(results):
        sec = sections[i] if sections is not None else None
        flags = section_flags(res)
        thumb, agree, mask, f = None, None, None, 1
        try:
            panels = small_panels(res, sec, reference_volume, thumb_px)
            s_img, mask, ref, f = panels
            thumb = qc_thumbnail(res, panels=panels)
            agree = plane_agreement(s_img, ref, mask)
        except AnchorError as exc:
            log.warning("no QC thumbnail for section %r: %s", res.section.get("name"), exc)
            flags.append("no image for QC" if isinstance(exc, InvalidSectionError) else "no template for QC")
        pos = plane_position(res)
        pts = _tissue_points(res, mask, f)
        c = pts.mean(axis=0)
        mt = res.matches
        rows.append(
            {
                "index": i + 1,
                "name": str(res.section.get("name", f"section {i + 1}")),
                "confidence": float(res.confidence),
                "flags": flags,
                "plane": pos["plane"],
                "position": f"{pos['plane']}, {pos['axis']} = {float(c['xyz'.index(pos['axis'])]):.1f} mm, "
                f"tilted {pos['tilt_deg']:.1f} deg",
                "axis_mm": float(c["xyz".index(pos["axis"])]),
                "rotation_deg": float(res.in_plane_rotation_deg),
                "centre_mm": c,
                "inliers": int(mt["inlier"].sum()),
                "matches": int(np.isfinite(mt["x"].to_numpy()).sum()),
                "agreement": agree,
                "thumbnail": thumb,
                "points": pts,
                "alternatives": [f"{a.get('label', '?')} ({float(a.get('score', 0)):.3f})" for a in res.alternatives],
            }
        )
    return rows


_CSS = """
body { font-family: system-ui, -apple-system, 'Segoe UI', sans-serif; margin: 1.2em; color: #222; }
h1 { font-size: 1.4em; margin-bottom: 0.2em; }
.summary { color: #444; margin-bottom: 1em; }
table { border-collapse: collapse; width: 100%; }
th, td { border-bottom: 1px solid #ddd; padding: 4px 8px; text-align: left; vertical-align: top; font-size: 0.9em; }
th { background: #f3f3f3; cursor: pointer; user-select: none; position: sticky; top: 0; }
th.sorted-asc::after { content: " \\25B2"; } th.sorted-desc::after { content: " \\25BC"; }
td.pos { min-width: 13em; }
td.conf { font-weight: bold; font-variant-numeric: tabular-nums; }
.flag { display: inline-block; background: #fde2e1; color: #8a1c14; border-radius: 3px; padding: 0 4px; margin: 1px; }
tr.low td.conf { color: #b3261e; } tr.high td.conf { color: #1e7b34; }
img.thumb { height: 150px; image-rendering: pixelated; cursor: zoom-in; }
img.thumb.big { height: 450px; cursor: zoom-out; }
.legend { font-size: 0.85em; color: #555; }
.overview img { max-width: 100%; }
"""

_JS = """
(function () {
  var table = document.getElementById('sections');
  var heads = table.tHead.rows[0].cells;
  function sortBy(col, dir) {
    var body = table.tBodies[0];
    var rows = Array.prototype.slice.call(body.rows);
    var key = heads[col].getAttribute('data-key'), num = heads[col].getAttribute('data-type') === 'num';
    rows.sort(function (a, b) {
      var x = a.getAttribute('data-' + key), y = b.getAttribute('data-' + key);
      if (num) { x = parseFloat(x); y = parseFloat(y); }
      return (x < y ? -1 : x > y ? 1 : 0) * dir;
    });
    rows.forEach(function (r) { body.appendChild(r); });
    for (var i = 0; i < heads.length; i++) { heads[i].classList.remove('sorted-asc', 'sorted-desc'); }
    heads[col].classList.add(dir > 0 ? 'sorted-asc' : 'sorted-desc');
  }
  for (var i = 0; i < heads.length; i++) {
    if (!heads[i].getAttribute('data-key')) continue;
    heads[i].addEventListener('click', (function (c) { return function () {
      var asc = heads[c].classList.contains('sorted-asc');
      sortBy(c, asc ? -1 : 1);
    }; })(i));
  }
  document.querySelectorAll('img.thumb').forEach(function (im) {
    im.addEventListener('click', function () { im.classList.toggle('big'); });
  });
})();
"""


def write_series_report(
    results: Sequence[AnchoringResult],
    sections: Sequence[Section | None] | None,
    path: str | PathLike[str],
    title: str | None = None,
    reference_volume: Any = None,
    thumb_px: int = 150,
) -> Path:
    """Write one self-contained HTML page about a series of anchored sections. Returns the path.

    Parameters
    ----------
    results : the anchorings (e.g. from :func:`siibra_anchor.anchor_series` or loaded from JSON).
    sections : the sections, same order (None, or None entries: use the image a result keeps in memory or
        the file recorded in ``result.section["path"]``; a section without an image gets no thumbnail and
        the flag "no image for QC").
    path : the .html file, written atomically.
    title : page heading (default "siibra-anchor series report").
    reference_volume : template to compare with (default: the embedded one of the results' space), see
        :func:`siibra_anchor.qc.reference_volume_of`.
    thumb_px : long side of each thumbnail panel in pixels.

    Flags per section: ``result.diagnostics["flags"]`` plus "low confidence (c)" below 0.5 and
    "ambiguous: <label>" when an alternative placement scores within 0.03 of the chosen one.
    """
    from .cache import atomic_write_text
    from .qc import INLIER_RGB, LOW_CONFIDENCE, OUTLIER_RGB

    results = list(results)
    if not results:
        raise InvalidParameterError("write_series_report needs at least one result; got an empty list")
    if sections is not None and len(sections) != len(results):
        raise InvalidSectionError(
            f"got {len(results)} results but {len(sections)} sections; pass one section per result (or None)"
        )
    spaces = sorted({r.space for r in results})
    rows = report_rows(results, sections, reference_volume, thumb_px)
    fig = series_overview(results, [r["points"] for r in rows], reference_volume, [str(r["index"]) for r in rows])
    overview = _fig_data_uri(fig, dpi=90)
    title = title or "siibra-anchor series report"
    n_low = sum(r["confidence"] < LOW_CONFIDENCE for r in rows)
    n_flag = sum(bool(r["flags"]) for r in rows)
    e = html.escape

    def rgb_css(c: tuple[float, float, float]) -> str:
        return "rgb({},{},{})".format(*(int(v * 255) for v in c))

    body = []
    for r in sorted(rows, key=lambda r: (r["confidence"], r["index"])):
        cls = "low" if r["confidence"] < LOW_CONFIDENCE else "high"
        flags = "".join(f'<span class="flag">{e(f)}</span>' for f in r["flags"]) or "&ndash;"
        ag = r["agreement"]
        ag_txt = f"r = {ag['r']:+.2f}, NMI = {ag['nmi']:.3f}" if ag else "&ndash;"
        img = (
            f'<img class="thumb" alt="QC of {e(r["name"])}" src="{_png_data_uri(r["thumbnail"])}">'
            if r["thumbnail"] is not None
            else "no image"
        )
        alts = "<br>".join(e(a) for a in r["alternatives"][:3]) or "&ndash;"
        if len(r["alternatives"]) > 3:
            alts += f"<br>(+{len(r['alternatives']) - 3} more)"
        body.append(
            f'<tr class="{cls}" data-index="{r["index"]}" data-name="{e(r["name"].lower())}" '
            f'data-conf="{r["confidence"]:.6f}" data-nflags="{len(r["flags"])}" data-plane="{e(r["plane"])}" '
            f'data-pos="{r["axis_mm"]:.3f}" data-inliers="{r["inliers"]}">'
            f'<td>{r["index"]}</td><td class="section-name">{e(r["name"])}</td>'
            f'<td class="conf">{r["confidence"]:.2f}</td><td>{flags}</td>'
            f'<td class="pos">{e(r["position"])}<br>in-plane rotation {r["rotation_deg"]:.1f} deg</td>'
            f"<td>{r['inliers']} / {r['matches']}</td><td>{ag_txt}</td><td>{alts}</td><td>{img}</td></tr>"
        )
    heads = [
        ("#", "index", "num"),
        ("section", "name", "text"),
        ("confidence", "conf", "num"),
        ("flags", "nflags", "num"),
        ("plane / position", "pos", "num"),
        ("inlier matches", "inliers", "num"),
        ("section vs reference", "", ""),
        ("alternatives", "", ""),
        ("QC (section + outline + matches | reference on the plane | checkerboard + reference edges)", "", ""),
    ]
    th = "".join(
        f"<th{' class=sorted-asc' if k == 'conf' else ''}"
        + (f' data-key="{k}" data-type="{t}"' if k else "")
        + f">{e(lab)}</th>"
        for lab, k, t in heads
    )
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    from . import __version__

    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>{e(title)}</title><style>{_CSS}</style></head>
<body>
<h1>{e(title)}</h1>
<div class="summary">{len(rows)} sections in {e(", ".join(spaces))}; {n_low} with confidence below
{LOW_CONFIDENCE:.1f}; {n_flag} flagged. Made by siibra-anchor {e(__version__)} on {stamp}.</div>
<div class="overview"><img id="overview" alt="where the sections lie" src="{overview}">
<div class="legend">Sections (numbered as in the table) coloured by confidence, red = 0 to green = 1, over the
outline of the reference brain.</div></div>
<h2>Sections</h2>
<div class="legend">Lowest confidence first; click a column header to sort, a thumbnail to enlarge it.
Matches: <span style="color:{rgb_css(INLIER_RGB)}">inliers</span>,
<span style="color:{rgb_css(OUTLIER_RGB)}">outliers</span>. A good placement shows the same anatomy in the
first two panels and continuous structures across the checkerboard tiles.</div>
<table id="sections"><thead><tr>{th}</tr></thead>
<tbody>
{chr(10).join(body)}
</tbody></table>
<script>{_JS}</script>
</body></html>
"""
    path = Path(path)
    atomic_write_text(path, page)
    return path
