#!/usr/bin/env bash
# The Train pane's first stage with and without the engine readied at the app's start, side by side:
# a project on the offline data with the README recipe's stages (tiny, Muon, a 1,200-step pretrain and
# a 1,500-step fine-tune, validated every 250 steps, 2 live samples a check), the kernel caches filled
# by a short pretrain and fine-tune, then bench/app_stages.py in rounds of the three --ready modes.
#
# usage: bench/app_ready.sh DIR [ROUNDS] [STAGES]     (DIR: made if missing, reused if it holds shards)
# Every line is JSON, also appended to $OUT/app-ready.jsonl (or /tmp/app-ready.jsonl).
set -eu
dir=$1 rounds=${2:-3} stages=${3:-pretrain}
here=$(cd "$(dirname "$0")/.." && pwd)
log=${OUT:-/tmp}/app-ready.jsonl
. "$here/bench/recipe_project.sh"
recipe_project
python3 "$here/bench/app_stages.py" -c "$dir/acm.toml" --rounds "$rounds" --stages "$stages" \
  --ready off,wait,at-once | tee -a "$log"
