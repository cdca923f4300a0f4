#!/usr/bin/env bash
# Every GPU experiment behind RESULTS.md in one go, as run on one NVIDIA H100 (16 CPU cores)
# within a 10-minute window: independent chains run side by side (LeNet-sized models leave
# the GPU mostly idle, so the chains share it well), each under a time limit, and each
# chain's results are packed into OUT_TARS/<chain>.tar.gz (model.pt files included,
# checkpoint.pt files left out).
#
#   OUT_TARS=/tmp/out LIMIT=540 bash experiments/gpu_all.sh
#
# Epochs are reduced from the scripts' defaults to fit the window (stated in RESULTS.md):
# SMOOTH_EPOCHS (issue 5 table 1), ADV_EPOCHS (issue 5 table 2, also the PNI model of
# issue 6), DEN_EPOCHS (issue 6 denoisers, DnCNN 8 x 32).
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD/src" PYTHONUNBUFFERED=1
OUT_TARS=${OUT_TARS:-runs/gpu_tars}
LIMIT=${LIMIT:-540}
SMOOTH_EPOCHS=${SMOOTH_EPOCHS:-8}
ADV_EPOCHS=${ADV_EPOCHS:-5}
DEN_EPOCHS=${DEN_EPOCHS:-8}
mkdir -p "$OUT_TARS" runs
T0=$(date +%s)
left() { echo $(( LIMIT - ($(date +%s) - T0) )); }

chain_smoothing() {
  DEVICE=cuda EPOCHS=$SMOOTH_EPOCHS OUT=runs/issue5_smoothing bash experiments/issue5_smoothing.sh
}
chain_adversarial() {
  DEVICE=cuda EPOCHS=$ADV_EPOCHS OUT=runs/issue5_adversarial bash experiments/issue5_adversarial.sh
  # smoothed inference on the PGD-AT model and the PNI model (trained by chain_pni meanwhile)
  DEVICE=cuda OUT=runs/issue6_smoothed_inference PGD_AT_MODEL=runs/issue5_adversarial/pgd_at/model.pt \
    PNI_MODEL=runs/issue5_adversarial/pni/model.pt bash experiments/issue6_smoothed_inference.sh
}
chain_pni() {  # PGD-AT with PNI weight noise (issue 5 item 2, used by issue 6 part 1)
  python3 -m smoothguard train --device cuda --threads 1 --seed 0 --data fashion-mnist --arch lenet \
    --objective pgd_at --eps 0.1 --norm linf --attack-steps 10 --noise-injection pni-w \
    --epochs "$ADV_EPOCHS" --batch 128 --optimizer sgd --lr 0.01 --momentum 0.9 --weight-decay 5e-4 \
    --schedule cosine --out-dir runs/issue5_adversarial/pni
}
chain_denoised() {
  DEVICE=cuda EPOCHS=$DEN_EPOCHS DEPTH=8 WIDTH=32 BATCH=10000 MODEL=runs/standard_lenet.pt \
    OUT=runs/issue6_denoised bash experiments/issue6_denoised.sh
}
chain_adaptive() {
  mkdir -p runs/issue7
  python3 benchmarks/bench_adaptive.py --device cuda --fixed-all --batch 20000 --every 25 \
    > runs/issue7/bench_adaptive_cuda.md 2> runs/issue7/bench_adaptive_cuda.err
}

for c in smoothing adversarial pni denoised adaptive; do
  ( timeout "$(left)" bash -c "$(declare -f chain_$c); $(declare -p SMOOTH_EPOCHS ADV_EPOCHS DEN_EPOCHS); chain_$c" \
      > "runs/chain_$c.log" 2>&1; echo "chain $c: rc $? after $(( $(date +%s) - T0 )) s" ) &
done
wait
tar czf "$OUT_TARS/issue5_smoothing.tar.gz" --exclude=checkpoint.pt runs/issue5_smoothing runs/chain_smoothing.log
tar czf "$OUT_TARS/issue5_adversarial.tar.gz" --exclude=checkpoint.pt runs/issue5_adversarial \
  runs/chain_adversarial.log runs/chain_pni.log
tar czf "$OUT_TARS/issue6.tar.gz" --exclude=checkpoint.pt --exclude=runs/issue6_denoised/surrogate_madry/model.pt runs/issue6_smoothed_inference runs/issue6_denoised \
  runs/chain_denoised.log
tar czf "$OUT_TARS/issue7.tar.gz" runs/issue7 runs/chain_adaptive.log
ls -la "$OUT_TARS"
