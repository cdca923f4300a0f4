# Shared by issue5_smoothing.sh and issue5_adversarial.sh (sourced, not run): environment
# defaults, the one optimizer/schedule for every model, and a resumable `train`.
DEVICE=${DEVICE:-cpu}
EPOCHS=${EPOCHS:-20}
MAX_TRAIN=${MAX_TRAIN:--1}
MAX_TEST=${MAX_TEST:--1}  # test images for the per-epoch log (-1: all 10,000)
THREADS=${THREADS:-1}
SEED=${SEED:-0}
PYTHON=${PYTHON:-python3}
DATA_ROOT=${DATA_ROOT:-${ROOT:-}}  # (or ROOT) folder of the Fashion-MNIST IDX files (default /usr/share/datasets/fashion-mnist)
export PYTHONPATH="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/src${PYTHONPATH:+:$PYTHONPATH}"
SG=("$PYTHON" -m smoothguard)
COMMON=(--device "$DEVICE" --threads "$THREADS" --seed "$SEED")
DATA=(--data fashion-mnist ${DATA_ROOT:+--root "$DATA_ROOT"})
# one optimizer and schedule for every model
OPTIM=(--epochs "$EPOCHS" --batch 128 --optimizer sgd --lr 0.01 --momentum 0.9 --weight-decay 5e-4 --schedule cosine)

train() {  # train DIR ARGS...: skip when DIR/model.pt exists, resume from DIR/checkpoint.pt
  local dir=$1; shift
  if [[ -f "$dir/model.pt" ]]; then echo "== skip $dir (model.pt exists)"; return; fi
  local resume=()
  [[ -f "$dir/checkpoint.pt" ]] && resume=(--resume)
  echo "== train $dir"
  "${SG[@]}" train "${COMMON[@]}" "${DATA[@]}" --arch lenet "${OPTIM[@]}" --max-train "$MAX_TRAIN" \
    --max-test "$MAX_TEST" --out-dir "$dir" "${resume[@]}" "$@"
}
