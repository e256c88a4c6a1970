"""The package's import graph flows one way (docs/architecture.md): core <- anchoring, io, adapters <-
evaluation, training, viewer <- cli. Every ``import`` statement counts, at module level or inside a function."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
#: package -> folder (pyproject's package-dir)
FOLDERS = {
    "siibra_anchor": ROOT / "siibra_anchor",
    "siibra_anchor.adapters": ROOT / "adapters",
    "siibra_anchor.viewer": ROOT / "viewer",
    "siibra_anchor.training": ROOT / "training",
}
MID = ("anchoring", "io", "adapters")
UPPER = ("evaluation", "training", "viewer")
#: stubs left at old import paths for one release (siibra_anchor._moved); they import the new place
MOVED = {
    "siibra_anchor.simulate",
    "siibra_anchor.benchmark",
    "siibra_anchor.series_bench",
    "siibra_anchor.scaling",
    "siibra_anchor.reliability",
    "siibra_anchor.patch_eval",
    "siibra_anchor.series",
    "siibra_anchor.apply",
    "siibra_anchor.adapters.formats",
    "siibra_anchor.baselines",
    "siibra_anchor.baselines.sitk",
    "siibra_anchor.baselines.template_floor",
}


def _modules() -> dict[str, Path]:
    out = {}
    for pkg, folder in FOLDERS.items():
        for f in folder.rglob("*.py"):
            rel = f.relative_to(folder).with_suffix("")
            parts = [p for p in rel.parts if p != "__init__"]
            if pkg == "siibra_anchor" and parts and parts[0] in ("adapters", "viewer", "training"):
                continue
            name = ".".join([pkg, *parts])
            out[name] = f
    return out


MODULES = _modules()


def layer(mod: str) -> str:
    """'public' (the package's lazy face), 'core', one of MID / UPPER, or 'cli'."""
    parts = mod.split(".")
    if mod == "siibra_anchor":
        return "public"
    sub = parts[1]
    if sub == "cli":
        return "cli"
    if sub in MID or sub in UPPER:
        return sub
    return "core"


def imports_of(mod: str, path: Path) -> list[tuple[str, list[str], int]]:
    """(absolute module, imported names, line) of every import statement of ``mod``."""
    tree = ast.parse(path.read_text(), filename=str(path))
    is_pkg = path.name == "__init__.py"
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                out.append((a.name, [], node.lineno))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = mod.split(".") if is_pkg else mod.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            names = [a.name for a in node.names]
            if node.level and not node.module:  # from . import x: x may be a module
                for n in names:
                    sub = f"{target}.{n}"
                    out.append((sub if sub in MODULES else target, [] if sub in MODULES else [n], node.lineno))
                continue
            out.append((target, names, node.lineno))
    return [(t, n, ln) for t, n, ln in out if t == "siibra_anchor" or t.startswith("siibra_anchor.")]


def allowed(src: str, dst: str) -> bool:
    a, b = layer(src), layer(dst)
    if a == "public" or src in MOVED:
        return True
    if b == "cli":
        return a == "cli"
    if a == "core":
        return b in ("core", "public") and dst != "siibra_anchor" or dst == "siibra_anchor" and False
    if a in MID:
        return b == "core" or b == a
    if a in UPPER:
        return b in ("core", a) or b in MID or b in UPPER
    return True  # cli uses anything


def _violations() -> list[str]:
    bad = []
    for mod, path in sorted(MODULES.items()):
        for dst, _names, line in imports_of(mod, path):
            if dst == "siibra_anchor" and layer(mod) in ("core",) and not _names_only_version(_names):
                bad.append(f"{mod}:{line} imports the package face siibra_anchor ({_names})")
            elif dst != "siibra_anchor" and not allowed(mod, dst):
                bad.append(f"{mod}:{line} ({layer(mod)}) imports {dst} ({layer(dst)})")
    return bad


def _names_only_version(names: list[str]) -> bool:
    return set(names) <= {"__version__"}


def _private_uses() -> list[str]:
    """Private names one package takes from another (``from x import _y`` across subpackages)."""
    bad = []
    for mod, path in sorted(MODULES.items()):
        if mod in MOVED or layer(mod) == "public":
            continue
        for dst, names, line in imports_of(mod, path):
            if dst == "siibra_anchor":
                continue
            same = layer(mod) == layer(dst) and (layer(mod) != "core" or mod.rsplit(".", 1)[0] == dst.rsplit(".", 1)[0])
            if layer(mod) == "core" and layer(dst) == "core":
                same = False
            for n in names:
                if n.startswith("_") and not n.startswith("__") and not same:
                    bad.append(f"{mod}:{line} takes private {dst}.{n}")
            if any(p.startswith("_") and not p.startswith("__") for p in dst.split(".")) and not same:
                if dst not in MOVED and not dst.endswith("._common"):
                    bad.append(f"{mod}:{line} imports private module {dst}")
    return bad


def test_the_import_graph_walks_every_module():
    assert "siibra_anchor.anchoring.stages" in MODULES
    assert "siibra_anchor.io.formats" in MODULES and "siibra_anchor.evaluation.benchmark" in MODULES
    assert layer("siibra_anchor.section") == "core" and layer("siibra_anchor.cli.anchor") == "cli"
    # the walk sees imports inside functions too
    found = imports_of("siibra_anchor.cli.anchor", MODULES["siibra_anchor.cli.anchor"])
    assert any(d == "siibra_anchor.evaluation.simulate" for d, _, _ in found)


def test_imports_flow_one_way():
    bad = _violations()
    assert not bad, "imports against the layering:\n" + "\n".join(bad)


def test_no_package_takes_another_ones_private_names():
    bad = _private_uses()
    assert not bad, "private names used across packages:\n" + "\n".join(bad)


@pytest.mark.parametrize(
    "src,dst,ok",
    [
        ("siibra_anchor.section", "siibra_anchor.io.formats", False),
        ("siibra_anchor.io.formats", "siibra_anchor.section", True),
        ("siibra_anchor.anchoring.stages", "siibra_anchor.adapters.regions", False),
        ("siibra_anchor.evaluation.benchmark", "siibra_anchor.anchoring.params", True),
        ("siibra_anchor.evaluation.reliability", "siibra_anchor.cli", False),
        ("siibra_anchor.cli.anchor", "siibra_anchor.evaluation.simulate", True),
    ],
)
def test_the_rule_itself(src, dst, ok):
    assert allowed(src, dst) is ok


@pytest.mark.parametrize(
    "old,new,name",
    [
        ("siibra_anchor.simulate", "siibra_anchor.evaluation.simulate", "simulate_section"),
        ("siibra_anchor.apply", "siibra_anchor.io.apply", "resample_to_space"),
        ("siibra_anchor.adapters.formats", "siibra_anchor.io.formats", "read_section_image"),
        ("siibra_anchor.baselines.sitk", "siibra_anchor.evaluation.baselines.sitk", "sitk_register"),
    ],
)
def test_old_import_paths_still_work_and_warn(old, new, name):
    import importlib
    import subprocess
    import sys

    code = (
        "import warnings, importlib; warnings.simplefilter('error', DeprecationWarning)\n"
        f"try:\n    importlib.import_module({old!r})\nexcept DeprecationWarning as w:\n    print('warned', w)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert "warned" in out.stdout and "moved to siibra_anchor." in out.stdout, out.stdout + out.stderr
    with pytest.warns(DeprecationWarning):
        import siibra_anchor._moved as moved

        moved.alias("siibra_anchor._test_alias", new)
    mod = importlib.import_module(old)
    assert mod is importlib.import_module(new) and hasattr(mod, name)


def test_extensions_are_declared_and_load():
    from siibra_anchor.extensions import extension, extension_names

    assert {"read_section_image", "fetch_template", "assign_regions", "neuroglancer_url"} <= set(extension_names())
    from siibra_anchor.io.formats import read_section_image

    assert extension("read_section_image") is read_section_image
    from siibra_anchor.errors import MissingDependencyError

    with pytest.raises(MissingDependencyError, match="no siibra-anchor extension"):
        extension("no-such-extension")
