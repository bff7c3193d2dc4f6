#!/usr/bin/env bash
# Whether the recipe's step (tiny, bf16, 8 x 1024, Muon) is paced by the host that queues it: the
# step and the queuing thread's CPU time (bench/first_step.py's queued steps) with MLX's CUDA graphs
# on and off, then bench/train_step.py's tokens/s for the same shape. A step whose queuing CPU time
# comes close to its wall is host-bound: a slower host makes it slower, fewer kernels make it faster.
# One JSON line each (ROUNDS rounds, default 2).
# usage: bench/host_bound.sh [ROUNDS]
set -euo pipefail
cd "$(dirname "$0")/.."
rounds="${1:-2}"
for round in $(seq "$rounds"); do
    for graphs in 1 0; do
        MLX_USE_CUDA_GRAPHS=$graphs python3 bench/first_step.py --optimizer muon --batch 8 --steady 30 --queued 60 \
            | sed "s/^{/{\"round\": $round, /"
    done
    python3 bench/train_step.py --preset tiny --batch 8 --seq 1024 --steps 60 --optimizer muon \
        | sed "s/^{/{\"round\": $round, /"
done
