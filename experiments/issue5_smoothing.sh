#!/usr/bin/env bash
# Issue 5, table 1: Gaussian vs SmoothAdv (PGD, 2 steps, m = 2, eps 0.5) vs consistency
# (m = 2, lambda 10, eta 0.5), each at sigma 0.25 and 0.5; LeNet on full Fashion-MNIST, the
# same epochs / optimizer / schedule for all; CERTIFY (n0 100, n 10,000, alpha 0.001) on the
# 500 test images --skip 20; one `analyze` table and plot over the six models.
#
#   DEVICE=cuda EPOCHS=20 OUT=runs/issue5_smoothing bash experiments/issue5_smoothing.sh
#   DEVICE=cpu EPOCHS=1 MAX_TRAIN=2000 CERT_MAX=20 CERT_N=1000 OUT=/tmp/smoke bash experiments/issue5_smoothing.sh
#
# Resumable: rerunning skips models whose model.pt exists, continues a model from its
# checkpoint.pt, and continues each certification file where it stopped.
# Environment: DEVICE (cpu|cuda, default cpu), EPOCHS (default 20), OUT (output folder),
# MAX_TRAIN (-1: all 60,000), CERT_MAX (-1: all 500 selected images), CERT_N (10000),
# THREADS (torch CPU threads, default 1), SEED (0), PYTHON (default python3), DATA_ROOT
# (folder with the Fashion-MNIST IDX files; default /usr/share/datasets/fashion-mnist).
set -euo pipefail
OUT=${OUT:-runs/issue5_smoothing}
CERT_MAX=${CERT_MAX:--1}
CERT_N=${CERT_N:-10000}
source "$(dirname "$0")/issue5_common.sh"
mkdir -p "$OUT"

certify() {  # certify DIR SIGMA: resumes DIR/certify.tsv
  local dir=$1 sigma=$2
  echo "== certify $dir (sigma $sigma)"
  "${SG[@]}" certify "${COMMON[@]}" --model "$dir/model.pt" "${DATA[@]}" --skip 20 --max "$CERT_MAX" \
    --sigma "$sigma" --n0 100 --n "$CERT_N" --alpha 0.001 --out "$dir/certify.tsv"
}

FILES=()
for sigma in 0.25 0.5; do
  train "$OUT/gaussian_s$sigma" --objective gaussian --noise-sd "$sigma"
  train "$OUT/smoothadv_s$sigma" --objective smoothadv --noise-sd "$sigma" --smoothadv-attack pgd \
    --attack-steps 2 --m-train 2 --eps 0.5 --warmup-epochs 1
  train "$OUT/consistency_s$sigma" --objective consistency --noise-sd "$sigma" --m-train 2 --lbd 10 --eta 0.5
  for m in gaussian smoothadv consistency; do
    certify "$OUT/${m}_s$sigma" "$sigma"
    FILES+=("$OUT/${m}_s$sigma/certify.tsv")
  done
done

echo "== analyze"
"${SG[@]}" analyze "${FILES[@]}" --radii 0,0.25,0.5,0.75,1.0 --format markdown \
  --out "$OUT/table.md" --plot "$OUT/certified_accuracy"
echo "== seconds per training epoch (mean over epochs, from log.tsv)"
for f in "$OUT"/*/log.tsv; do
  awk -F'\t' -v name="$(basename "$(dirname "$f")")" 'NR==1{for(i=1;i<=NF;i++) if($i=="seconds") c=i; next}
    {s+=$c; n++} END{if(n) printf "%s\t%.2f s/epoch over %d epochs\n", name, s/n, n}' "$f"
done | tee "$OUT/seconds_per_epoch.txt"
