#!/usr/bin/env bash
# Issue 5, table 2: standard vs PGD-AT vs TRADES vs fast AT at l_inf eps = 0.1 (LeNet, full
# Fashion-MNIST, the same epochs / optimizer / schedule for all). Then `evaluate`: FGSM,
# PGD-40 with 10 restarts, APGD-CE and APGD-DLR (100 steps) as a worst-case cascade on the
# 500 test images --skip 20; plus training seconds per epoch from each log.tsv.
#
#   DEVICE=cuda EPOCHS=20 OUT=runs/issue5_adversarial bash experiments/issue5_adversarial.sh
#   DEVICE=cpu EPOCHS=1 MAX_TRAIN=2000 EVAL_MAX=20 OUT=/tmp/smoke bash experiments/issue5_adversarial.sh
#
# Resumable: rerunning skips models whose model.pt exists (continues from checkpoint.pt
# otherwise) and evaluations whose table.json exists.
# Environment: DEVICE (cpu|cuda), EPOCHS (20), OUT, MAX_TRAIN (-1: all), EVAL_MAX (-1: all
# 500 selected images), ATTACK_STEPS (training PGD/TRADES steps, 10), THREADS (1), SEED (0),
# PYTHON (python3), DATA_ROOT (Fashion-MNIST IDX folder; default /usr/share/datasets/fashion-mnist).
set -euo pipefail
OUT=${OUT:-runs/issue5_adversarial}
EVAL_MAX=${EVAL_MAX:--1}
ATTACK_STEPS=${ATTACK_STEPS:-10}
EPS=0.1
source "$(dirname "$0")/issue5_common.sh"
mkdir -p "$OUT"

evaluate() {  # evaluate DIR: skip when DIR/eval/table.json exists
  local dir=$1
  if [[ -f "$dir/eval/table.json" ]]; then echo "== skip evaluation of $dir"; return; fi
  echo "== evaluate $dir"
  "${SG[@]}" evaluate "${COMMON[@]}" --model "$dir/model.pt" "${DATA[@]}" --skip 20 --max "$EVAL_MAX" \
    --norm linf --eps "$EPS" --attacks fgsm,pgd,apgd-ce,apgd-dlr --steps 40 --restarts 10 --apgd-steps 100 \
    --grid-examples 0 --out-dir "$dir/eval"
}

train "$OUT/standard" --objective standard
train "$OUT/pgd_at" --objective pgd_at --eps "$EPS" --norm linf --attack-steps "$ATTACK_STEPS"
train "$OUT/trades" --objective trades --eps "$EPS" --norm linf --attack-steps "$ATTACK_STEPS" --beta 6
train "$OUT/fast_at" --objective fast_at --eps "$EPS" --norm linf
for m in standard pgd_at trades fast_at; do
  evaluate "$OUT/$m"
done

echo "== summary"
"$PYTHON" - "$OUT" standard pgd_at trades fast_at <<'PY' | tee "$OUT/summary.md"
import csv, json, sys
from pathlib import Path
out = Path(sys.argv[1])
print("| model | clean acc | robust acc (worst case, l_inf 0.1) | s/epoch (train) | epochs |")
print("|---|---|---|---|---|")
for name in sys.argv[2:]:
    rows = list(csv.DictReader((out / name / "log.tsv").open(), delimiter="\t"))
    secs = sum(float(r["seconds"]) for r in rows) / len(rows)
    per = list(csv.DictReader((out / name / "eval" / "per_example.tsv").open(), delimiter="\t"))
    clean = sum(int(r["clean_pred"]) == int(r["label"]) for r in per) / len(per)
    robust = sum(int(r["robust"]) for r in per) / len(per)
    print(f"| {name} | {clean:.3f} | {robust:.3f} | {secs:.2f} | {len(rows)} |")
PY
