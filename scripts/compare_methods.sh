#!/usr/bin/env bash
# Every registered method on Fashion-MNIST without normalization and without gradient clipping:
# a plain VGG-11 and a ResNet-20 (RESULTS.md, "Stability without the authors' clipping: every
# method"). About 1.5-2 hours on 2 CPU
# cores; add e.g. `--device cuda` as an argument to run on a GPU. Tables: runs/methods-*/results.json.
set -euo pipefail
INITLAB=${INITLAB:-.venv/bin/initlab}
COMMON=(--data fashion-mnist --subset 8000 --test-subset 4000 --no-bn --epochs 6 --seeds 3
        --lr 0.1 --batch-size 128 --set metainit.steps=100 --quiet)
BASE=default,kaiming,xavier,orthogonal,zero,lsuv,metainit,emergence
OMP_NUM_THREADS=1 "$INITLAB" compare "${COMMON[@]}" --model vgg --depth 11 --width 8 \
    --methods $BASE,gradinit-authors,kaiming+gradinit-authors --out runs/methods-vgg "$@" &
OMP_NUM_THREADS=1 "$INITLAB" compare "${COMMON[@]}" --model resnet --depth 20 --width 8 \
    --methods $BASE,fixup,skipinit,gradinit-authors,kaiming+gradinit-authors --out runs/methods-resnet "$@" &
wait
