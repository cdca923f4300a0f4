#!/usr/bin/env bash
# Issue 6, part 1: smoothed inference (Nemcovsky, Zheltonozhskii, Baskin et al.) as an
# empirical defense on Fashion-MNIST at l_inf eps 0.1, for a PGD-AT model and a PNI model
# (both trained by experiments/issue5_adversarial.sh). Does smoothing raise accuracy under
# PGD through one noise draw per step (the paper's evaluation), and does the gain survive
# EPGD (m draws per step), transfer from the base model and NAttack?
#
# Usage (from the repository root; runs resume: rerun the same command after an interruption):
#   DEVICE=cuda bash experiments/issue6_smoothed_inference.sh
#   PGD_AT_MODEL=runs/issue5_adversarial/pgd_at/model.pt PNI_MODEL=runs/issue5_adversarial/pni/model.pt OUT=runs/issue6 bash ...
# Smoke test on CPU (embedded model, demo data, a handful of images):
#   SMOKE=1 DEVICE=cpu OUT=/tmp/issue6_smoke bash experiments/issue6_smoothed_inference.sh
#
# Environment:
#   DEVICE        cpu | cuda (default cuda when available, else cpu)
#   OUT           output folder (default runs/issue6)
#   PGD_AT_MODEL  PGD adversarially trained checkpoint (default runs/issue5_adversarial/pgd_at/model.pt)
#   PNI_MODEL     PNI (+ PGD-AT) checkpoint (default runs/issue5_adversarial/pni/model.pt)
#                 (a missing checkpoint is skipped with a message; none at all exits 2)
#   IMAGES        test images: every 20th of the 10,000 (default 500)
#   SIGMAS, DRAWS, METHODS, ATTACKS, STEPS: the white-box/transfer grid (defaults below)
#   NATTACK_DRAWS, NATTACK_METHODS, QUERIES, POPULATION: NAttack runs separately on a smaller
#                 grid (each query costs m forward passes: on the full grid it would cost ~50x more)
#   BATCH, ATTACK_BATCH: noisy images per forward pass / per attack step (larger defaults on cuda)
#   PYTHON        interpreter (default python3; run with PYTHONPATH=src from a checkout)
#   THREADS       torch CPU threads (default 1)
#   SMOKE=1       embedded model twice on 4 demo images with a tiny grid (checks the wiring)
set -euo pipefail

PYTHON=${PYTHON:-python3}
DEVICE=${DEVICE:-$($PYTHON -c 'import torch; print("cuda" if torch.cuda.is_available() else "cpu")')}
OUT=${OUT:-runs/issue6}
PGD_AT_MODEL=${PGD_AT_MODEL:-runs/issue5_adversarial/pgd_at/model.pt}
PNI_MODEL=${PNI_MODEL:-runs/issue5_adversarial/pni/model.pt}
IMAGES=${IMAGES:-500}
SIGMAS=${SIGMAS:-0,0.05,0.1,0.2,0.3}
DRAWS=${DRAWS:-1,4,16,64,256}
METHODS=${METHODS:-hard,soft,weighted}
ATTACKS=${ATTACKS:-pgd,epgd,transfer}
STEPS=${STEPS:-40}
NATTACK_DRAWS=${NATTACK_DRAWS:-1,4,16}
NATTACK_METHODS=${NATTACK_METHODS:-hard,soft}
QUERIES=${QUERIES:-2000}
POPULATION=${POPULATION:-100}
if [[ "$DEVICE" == cuda* ]]; then BATCH=${BATCH:-20000}; ATTACK_BATCH=${ATTACK_BATCH:-65536}
else BATCH=${BATCH:-1000}; ATTACK_BATCH=${ATTACK_BATCH:-4096}; fi
THREADS=${THREADS:-1}
DATA=(--data fashion-mnist --skip 20 --max "$IMAGES")

if [[ "${SMOKE:-0}" == "1" ]]; then
  # the wiring only: the embedded model stands in for both checkpoints
  MODELS=("pgd_at:" "pni:")
  DATA=(--data demo --max 4)
  SIGMAS=0,0.25 DRAWS=1,4 METHODS=hard,soft STEPS=3 NATTACK_DRAWS=1,2 QUERIES=41 POPULATION=20
else
  MODELS=()
  for spec in "pgd_at:$PGD_AT_MODEL" "pni:$PNI_MODEL"; do
    path=${spec#*:}
    if [[ -f "$path" ]]; then MODELS+=("$spec")
    else echo "skipping ${spec%%:*}: no checkpoint $path (train it with experiments/issue5_adversarial.sh," \
              "or set PGD_AT_MODEL / PNI_MODEL)" >&2
    fi
  done
  if [[ ${#MODELS[@]} -eq 0 ]]; then echo "no checkpoint found" >&2; exit 2; fi
fi

mkdir -p "$OUT"
for spec in "${MODELS[@]}"; do
  name=${spec%%:*}
  path=${spec#*:}
  model_arg=()
  [[ -n "$path" ]] && model_arg=(--model "$path")
  common=("${model_arg[@]}" "${DATA[@]}" --sigmas "$SIGMAS" --norm linf --eps 0.1 --device "$DEVICE"
          --threads "$THREADS" --seed 0 --batch "$BATCH" --attack-batch "$ATTACK_BATCH" --format markdown)
  # --draws is --m (torchrun-safe spelling); the TSVs resume, the tables and plots are rewritten
  echo "== $name ${path:-(embedded model)} on $DEVICE: pgd, epgd, transfer" >&2
  start=$(date +%s)
  "$PYTHON" -m smoothguard smooth-eval "${common[@]}" --draws "$DRAWS" --methods "$METHODS" \
    --attacks "$ATTACKS" --steps "$STEPS" --out-dir "$OUT/$name" | tee "$OUT/$name.md"
  echo "$name white-box+transfer: $(( $(date +%s) - start )) s wall" | tee -a "$OUT/times.txt" >&2
  echo "== $name: nattack" >&2
  start=$(date +%s)
  "$PYTHON" -m smoothguard smooth-eval "${common[@]}" --draws "$NATTACK_DRAWS" --methods "$NATTACK_METHODS" \
    --attacks nattack --queries "$QUERIES" --population "$POPULATION" --out-dir "$OUT/${name}_nattack" \
    | tee "$OUT/${name}_nattack.md"
  echo "$name nattack: $(( $(date +%s) - start )) s wall" | tee -a "$OUT/times.txt" >&2
done
echo "tables: $OUT/{pgd_at,pni}{,_nattack}/table.md; plots: $OUT/*/accuracy_vs_{m,sigma}.png" >&2
