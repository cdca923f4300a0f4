#!/usr/bin/env bash
# Denoised smoothing of an off-the-shelf Fashion-MNIST classifier (issue 6, part 2).
# Salman, Sun, Yang, Kapoor, Kolter, "Denoised Smoothing", NeurIPS 2020.
#
# A standard-trained (no noise) LeNet, certified at sigma = 0.25 with no denoiser and with
# DnCNN denoisers trained by MSE, stability, hybrid (MSE, then stability from --init) and
# black-box stability (on two surrogate classifiers only; the target is never used in
# training), then the black-box one again through `smoothguard serve` + `certify --api`
# (the target as a label-only HTTP endpoint), which must give the same rows.
#
#   DEVICE=cuda experiments/issue6_denoised.sh                 # the full run (GPU)
#   EPOCHS=1 MAX_TRAIN=2000 MAX=5 N=1000 experiments/issue6_denoised.sh   # a CPU smoke test
#
# Every step is resumable: rerun the same command after an interruption (finished models
# are kept, training resumes from OUT/<step>/checkpoint.pt, result files continue).
# Env: DEVICE (cpu|cuda), OUT, EPOCHS (denoisers), FT_EPOCHS/FT_LR (stability fine-tuning),
# CLF_EPOCHS/SUR_EPOCHS (classifiers), MODEL (a classifier checkpoint to use instead of
# training one), DEPTH/WIDTH (DnCNN; default 17x64 on cuda as in the paper, 8x32 on cpu),
# N (CERTIFY samples, paper 10,000), N0, SKIP, MAX (images), API_MAX, SIGMA, BATCH,
# MAX_TRAIN/MAX_TEST (subsets, for smoke tests), ROOT (Fashion-MNIST folder, default
# /usr/share/datasets/fashion-mnist), THREADS, PY (a python with torch; default python3).
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
export SMOOTHGUARD_NO_PROGRESS="${SMOOTHGUARD_NO_PROGRESS:-1}"

PY=${PY:-python3}
DEVICE=${DEVICE:-cpu}
OUT=${OUT:-runs/issue6_denoised}
EPOCHS=${EPOCHS:-20}
FT_EPOCHS=${FT_EPOCHS:-$EPOCHS}
FT_LR=${FT_LR:-1e-4}
CLF_EPOCHS=${CLF_EPOCHS:-10}
SUR_EPOCHS=${SUR_EPOCHS:-5}
if [ "$DEVICE" = cpu ]; then DEPTH=${DEPTH:-8}; WIDTH=${WIDTH:-32}; else DEPTH=${DEPTH:-17}; WIDTH=${WIDTH:-64}; fi
SIGMA=${SIGMA:-0.25}
N=${N:-10000}
N0=${N0:-100}
SKIP=${SKIP:-20}
MAX=${MAX:--1}
API_MAX=${API_MAX:-$MAX}
BATCH=${BATCH:-400}
MAX_TRAIN=${MAX_TRAIN:--1}
MAX_TEST=${MAX_TEST:--1}
THREADS=${THREADS:-1}

SG=("$PY" -m smoothguard)
COMMON=(--device "$DEVICE" --threads "$THREADS")
DATA=(--data fashion-mnist)
[ -n "${ROOT:-}" ] && DATA+=(--root "$ROOT")
SUBSET=("${DATA[@]}" --max-train "$MAX_TRAIN" --max-test "$MAX_TEST")
mkdir -p "$OUT"
TIMES="$OUT/times.tsv"
[ -f "$TIMES" ] || printf 'step\tseconds\n' >"$TIMES"

timed() {  # timed NAME CMD...: run, append the wall time to times.tsv
    local name=$1 t0 t1
    shift
    t0=$(date +%s.%N)
    "$@"
    t1=$(date +%s.%N)
    awk -v n="$name" -v a="$t0" -v b="$t1" 'BEGIN { printf "%s\t%.1f\n", n, b - a }' >>"$TIMES"
}

train_step() {  # train_step DIR SUBCOMMAND ARGS...: skip when DIR/model.pt exists, resume when a checkpoint does
    local dir=$1
    shift
    if [ -f "$dir/model.pt" ]; then
        echo "== $dir: done"
        return
    fi
    local resume=()
    [ -f "$dir/checkpoint.pt" ] && resume=(--resume)
    echo "== $dir: ${SG[*]} $*"
    timed "$(basename "$dir")" "${SG[@]}" "$@" "${SUBSET[@]}" "${COMMON[@]}" --out-dir "$dir" "${resume[@]}"
}

# 1. the off-the-shelf classifier (no noise) and two surrogates for the black-box denoiser
if [ -z "${MODEL:-}" ]; then
    train_step "$OUT/standard_lenet" train --arch lenet --objective standard --epochs "$CLF_EPOCHS" \
        --schedule cosine --lr 0.02 --seed 0
    MODEL="$OUT/standard_lenet/model.pt"
fi
train_step "$OUT/surrogate_madry" train --arch madry_cnn --objective standard --epochs "$SUR_EPOCHS" \
    --schedule cosine --lr 0.02 --seed 1
train_step "$OUT/surrogate_lenet" train --arch lenet --objective standard --epochs "$SUR_EPOCHS" \
    --schedule cosine --lr 0.02 --seed 2
SURROGATES="$OUT/surrogate_madry/model.pt,$OUT/surrogate_lenet/model.pt"

# 2. denoisers at sigma. The MSE denoiser needs no classifier; it is trained with the
# surrogates (only to log accuracy) so that the black-box chain never touches the target.
DEN=(--noise-sd "$SIGMA" --depth "$DEPTH" --width "$WIDTH" --seed 0)
train_step "$OUT/den_mse" train-denoiser --objective mse --surrogates "$SURROGATES" "${DEN[@]}" \
    --epochs "$EPOCHS" --lr 1e-3
train_step "$OUT/den_stability" train-denoiser --objective stability --classifier "$MODEL" "${DEN[@]}" \
    --epochs "$EPOCHS" --lr 1e-3
FT=(--noise-sd "$SIGMA" --init "$OUT/den_mse/model.pt" --epochs "$FT_EPOCHS" --lr "$FT_LR" --seed 0)
train_step "$OUT/den_hybrid" train-denoiser --objective stability --classifier "$MODEL" "${FT[@]}"
train_step "$OUT/den_blackbox" train-denoiser --objective stability --surrogates "$SURROGATES" "${FT[@]}"

# 3. CERTIFY (Cohen et al.) of x -> f(x) and x -> f(D(x)) on every SKIP-th test image
CERT=(--model "$MODEL" "${DATA[@]}" --skip "$SKIP" --max "$MAX" --sigma "$SIGMA" --n0 "$N0" --n "$N"
      --batch "$BATCH" "${COMMON[@]}")
FILES=()
for name in none mse stability hybrid blackbox; do
    den=()
    [ "$name" != none ] && den=(--denoiser "$OUT/den_$name/model.pt")
    echo "== certify: $name"
    timed "certify_$name" "${SG[@]}" certify "${CERT[@]}" "${den[@]}" --out "$OUT/cert_$name.tsv"
    FILES+=("$OUT/cert_$name.tsv")
done
"${SG[@]}" analyze "${FILES[@]}" --radii 0,0.25,0.5 --out "$OUT/table.md" --plot "$OUT/certified_accuracy"

# 4. the black-box denoiser in front of the target served as a label-only HTTP API:
# D runs here, only D(x + noise) is sent, the answer is labels. Same seed -> same rows.
READY="$OUT/serve.url"
rm -f "$READY"
"${SG[@]}" serve --model "$MODEL" --port 0 --ready-file "$READY" "${COMMON[@]}" >"$OUT/serve.log" 2>&1 &
SERVER=$!
trap 'kill "$SERVER" 2>/dev/null || true' EXIT
for _ in $(seq 600); do
    [ -f "$READY" ] && break
    kill -0 "$SERVER" 2>/dev/null || { cat "$OUT/serve.log"; exit 1; }
    sleep 0.2
done
URL=$(cat "$READY")
echo "== certify --api $URL --denoiser den_blackbox"
API_CERT=("${DATA[@]}" --skip "$SKIP" --max "$API_MAX" --sigma "$SIGMA" --n0 "$N0" --n "$N" --batch "$BATCH"
          "${COMMON[@]}")
timed certify_api_blackbox "${SG[@]}" certify --api "$URL" --denoiser "$OUT/den_blackbox/model.pt" "${API_CERT[@]}" \
    --out "$OUT/cert_api_blackbox.tsv"
kill "$SERVER" 2>/dev/null || true
"${SG[@]}" analyze "$OUT/cert_blackbox.tsv" "$OUT/cert_api_blackbox.tsv" --radii 0,0.25,0.5 \
    --out "$OUT/table_api.md" --no-plot
"$PY" - "$OUT/cert_blackbox.tsv" "$OUT/cert_api_blackbox.tsv" <<'EOF'
import sys
local, api = ({l.split("\t")[0]: l.split("\t")[:5] for l in open(p).read().splitlines()[1:]} for p in sys.argv[1:])
same = sum(local.get(i) == row for i, row in api.items())
print(f"api vs in-process (black-box denoiser): {same} of {len(api)} rows identical (idx label predict radius correct)")
EOF
echo "== wall times (s):"
cat "$TIMES"
