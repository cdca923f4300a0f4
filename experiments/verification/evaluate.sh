#!/bin/sh
# RESULTS.md "Deterministic verification": evaluate one trained model at l_inf eps 0.1 on the
# first 300 Fashion-MNIST test images: verified accuracy (IBP, CROWN-IBP) and robust accuracy
# under PGD (100 steps, 5 restarts, CE) and APGD (DLR loss, 100 steps, 2 restarts), the sandwich
# table, then CROWN on the first 100 of those images (seconds per image on this shared CPU).
# Usage: sh experiments/verification/evaluate.sh RUN_DIR
set -e
RUN=${1:?run dir with model.pt}
SEL="--data fashion-mnist --max 300 --threads 1"
for m in ibp crown-ibp; do
  smoothguard verify --model $RUN/model.pt $SEL --norm linf --eps 0.1 --method $m --out $RUN/eval/verify_$m.tsv
done
smoothguard attack --model $RUN/model.pt $SEL --attack pgd --norm linf --eps 0.1 --steps 100 --restarts 5 \
  --out $RUN/eval/attack_pgd.tsv
smoothguard attack --model $RUN/model.pt $SEL --attack apgd --loss dlr --norm linf --eps 0.1 --steps 100 \
  --restarts 2 --out $RUN/eval/attack_apgd.tsv
smoothguard analyze $RUN/eval/*.tsv --format markdown --out $RUN/eval/sandwich.md
smoothguard verify --model $RUN/model.pt --data fashion-mnist --max 100 --threads 1 --norm linf --eps 0.1 \
  --method crown --out $RUN/eval100/verify_crown.tsv
