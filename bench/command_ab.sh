#!/usr/bin/env bash
# One `acm train` command a stage, this checkout's code against another's, side by side: the README
# recipe's project (bench/recipe_project.sh), then in each round a fresh process of this checkout's
# `acm train STAGE` and one of BEFORE's (another checkout of acm, e.g. `git archive REV | tar -x -C
# BEFORE`), each timed by its own bench/command_wall.py from the command to its exit. Each JSON line
# gets "code": "after" (this checkout) or "before".
#
# usage: bench/command_ab.sh DIR BEFORE [ROUNDS] [STAGES]   (ROUNDS 2; STAGES "pretrain finetune")
# MAX_STEPS=N stops each command after N steps (a check of the script itself).
# Every line is also appended to $OUT/command-ab.jsonl (or /tmp/command-ab.jsonl).
set -eu
dir=$1 before=$(cd "$2" && pwd) rounds=${3:-2} stages=${4:-pretrain finetune}
here=$(cd "$(dirname "$0")/.." && pwd)
log=${OUT:-/tmp}/command-ab.jsonl
. "$here/bench/recipe_project.sh"
recipe_project
base_run
tagged() { python3 -c 'import json, sys
for line in sys.stdin:
    print(json.dumps({**json.loads(line), "code": sys.argv[1]}), flush=True)' "$1"; }
for round in $(seq "$rounds"); do
  for stage in $stages; do
    from=$([ "$stage" = finetune ] && echo "--run-from base" || true)
    for code in after before; do
      root=$([ $code = after ] && echo "$here" || echo "$before")
      (cd "$root" && PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}" python3 bench/command_wall.py \
        --project "$dir" --stage "$stage" $from --rounds 1 ${MAX_STEPS:+--max-steps $MAX_STEPS}) | tagged $code | tee -a "$log"
    done
  done
done
