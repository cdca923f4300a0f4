#!/bin/sh
# RESULTS.md "Deterministic verification": three LeNets on the first 10,000 Fashion-MNIST
# training images, same data, epochs and optimizer; certified training at eps 0.15 (l_inf),
# PGD-AT at the evaluation eps 0.1. One thread each (2-core machine shared with others).
# Usage: sh experiments/verification/train.sh OUT_DIR {ibp|crown_ibp|pgd_at}
set -e
OUT=${1:?out dir}; WHICH=${2:?objective}
COMMON="--data fashion-mnist --arch lenet --max-train 10000 --max-test 1000 --epochs 12 --batch 128 \
  --optimizer adam --lr 0.0005 --schedule constant --weight-decay 0 --threads 1 --seed 0"
case $WHICH in
  ibp) smoothguard train $COMMON --objective ibp --eps 0.15 --warmup 0.15 --ramp 0.6 --out-dir $OUT/ibp ;;
  crown_ibp) smoothguard train $COMMON --objective crown_ibp --eps 0.15 --warmup 0.15 --ramp 0.6 --out-dir $OUT/crown_ibp ;;
  pgd_at) smoothguard train $COMMON --objective pgd_at --eps 0.1 --attack-steps 10 --out $OUT/pgd_at ;;
esac
