#!/usr/bin/env bash
# `acm train` with and without its engine readied beside the command's own start, side by side: a
# project on the offline data with the README recipe's stages (tiny, Muon, a 1,200-step pretrain and
# a 1,500-step fine-tune, validated every 250 steps, 2 live samples a check), the kernel caches filled
# by a short pretrain and fine-tune, then bench/command_wall.py in rounds of train.ready_in_command on
# and off, each a fresh `acm train` process timed from the command to its exit.
#
# usage: bench/command_ready.sh DIR [ROUNDS] [STAGES]   (DIR: made if missing, reused if it holds shards;
#        STAGES: pretrain, finetune or both, the default)
# Every line is JSON, also appended to $OUT/command-ready.jsonl (or /tmp/command-ready.jsonl).
set -eu
dir=$1 rounds=${2:-3} stages=${3:-pretrain finetune}
here=$(cd "$(dirname "$0")/.." && pwd)
log=${OUT:-/tmp}/command-ready.jsonl
. "$here/bench/recipe_project.sh"
recipe_project
base_run
for stage in $stages; do
  from=$([ "$stage" = finetune ] && echo "--run-from base" || true)
  PYTHONPATH="$here${PYTHONPATH:+:$PYTHONPATH}" python3 "$here/bench/command_wall.py" --project "$dir" \
    --stage "$stage" $from --rounds "$rounds" --ready on off | tee -a "$log"
done
