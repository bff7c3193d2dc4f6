#!/usr/bin/env bash
# Training-step figures side by side on one GPU: acm's step (bench/train_step.py) and the team's
# PyTorch reference (gpt_step.py: compiled, bf16 autocast, fused AdamW) on the same shapes.
#
# usage: REF=path/to/gpt_step.py bench/gpu_compare.sh tiny:16 medium:8 ...     (PRESET:BATCH)
#   VARIANTS='--per-tensor|--sync'  acm runs per shape besides the default step, '|'-separated
#   TORCH=0 / ACM=0                 skip PyTorch / acm
# Every run prints one JSON line, also appended to $OUT/runs.jsonl (or /tmp/runs.jsonl).
set -u
cd "$(dirname "$0")/.."
declare -A SHAPE=([tiny]="--layers 12 --dim 768 --heads 12 --vocab 16000"
                  [medium]="--layers 24 --dim 1024 --heads 16 --vocab 32000")
log=${OUT:-/tmp}/runs.jsonl
IFS='|' read -ra extra <<< "${VARIANTS:-}"
for spec in "$@"; do
  preset=${spec%%:*} batch=${spec##*:}
  if [ "${TORCH:-1}" = 1 ]; then
    python3 "$REF" torch ${SHAPE[$preset]} --seq 1024 --batch "$batch" --dtype amp | tee -a "$log"
  fi
  if [ "${ACM:-1}" = 1 ]; then
    for v in "" "${extra[@]}"; do
      PYTHONPATH=bench:.${PYTHONPATH:+:$PYTHONPATH} python3 bench/train_step.py --preset "$preset" --batch "$batch" $v | tee -a "$log"
    done
  fi
done
