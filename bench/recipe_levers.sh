#!/bin/bash
# Recipe levers, one at a time, side by side on one GPU (bench/RESULTS.md, "Recipe levers over 157
# repositories"). A project folder PROJECT holds data/ (shards and tokenizer, made with `acm data
# fetch`, `acm tokenizer train`, `acm prepare`) and an acm.toml with the baseline:
#   [model] preset = "tiny"; [train.pretrain] steps = 1200;
#   [train.finetune] steps = 3000, learning_rate = 0.0001, pairs_share = 0.6
# One pretrain, then fine-tunes that each change one setting, two lanes at a time; each prints one
# JSON line (the fine-tune's evaluation on $SAMPLES samples, 64 unless set, and its val curve) to
# $OUT/levers.jsonl. Sourced, it only defines the functions.
# Usage: PROJECT=DIR REPO=acm-checkout OUT=results-folder bench/recipe_levers.sh
set -u
cd "$PROJECT"
A="python3 -m core.cli"
export PYTHONPATH=$REPO:${PYTHONPATH:-}
stamp() { echo "$(date +%s) $*" >> "$OUT/timeline.txt"; }

pretrain() {  # pretrain NAME [key=value...]
  local run=$1; shift; local cfg=cfg-$run.toml
  cp acm.toml "$cfg"
  for kv in "$@"; do $A -c "$cfg" config set "${kv%%=*}" "${kv#*=}" > /dev/null || return 1; done
  stamp "start pretrain $run"
  $A -c "$cfg" train pretrain --run "$run" > "$OUT/pt-$run.log" 2>&1 || { tail -n 3 "$OUT/pt-$run.log"; return 1; }
  stamp "done pretrain $run"
}

finetune() {  # finetune BASE NAME [key=value...]
  local base=$1 run=$2; shift 2; local cfg=cfg-$run.toml
  cp acm.toml "$cfg"
  for kv in "$@"; do $A -c "$cfg" config set "${kv%%=*}" "${kv#*=}" > /dev/null || return 1; done
  mkdir -p "runs/$run" && cp -r "runs/$base/pretrain" "runs/$base/config.toml" "runs/$run/"
  stamp "start finetune $run"
  $A -c "$cfg" train finetune --run "$run" > "$OUT/ft-$run.log" 2>&1 || { tail -n 3 "$OUT/ft-$run.log"; return 1; }
  stamp "trained $run"
  $A -c "$cfg" eval --run "$run" --samples "${SAMPLES:-64}" --json > "runs/$run/eval-out.json" 2> "$OUT/ev-$run.log" \
    || { tail -n 3 "$OUT/ev-$run.log"; return 1; }
  python3 - "$run" "$*" "$OUT/ft-$run.log" >> "$OUT/levers.jsonl" <<'PY'
import json, re, sys
run, lever, log = sys.argv[1:4]
d = json.load(open(f"runs/{run}/eval-out.json"))
ft = d["stages"].get("finetune", {})
print(json.dumps({"run": run, "lever": lever, "code_generation": ft.get("code_generation"),
                  "checked": d["stages"].get("finetune+checked", {}).get("code_generation"),
                  "code_val_loss": ft.get("code", {}).get("val_loss"), "step": ft.get("step"),
                  "val_curve": [[int(a), float(b)] for a, b in re.findall(r"^step (\d+) val loss ([\d.]+)", open(log).read(), re.M)]}))
PY
  stamp "done $run"
}

[[ "${BASH_SOURCE[0]}" != "$0" ]] && return 0  # sourced for its functions (bench/recipe_lanes.sh)
pretrain base || exit 1
( finetune base b0
  finetune base muon train.finetune.optimizer=muon
  finetune base lr3 train.finetune.learning_rate=0.0003
  finetune base muon-e2 train.finetune.optimizer=muon train.finetune.steps=6000 ) &
( finetune base muon-s1 train.finetune.optimizer=muon train.finetune.seed=1
  finetune base lr3-s1 train.finetune.learning_rate=0.0003 train.finetune.seed=1
  finetune base muon-doc train.finetune.optimizer=muon train.finetune.start_at_documents=true
  pretrain none train.pretrain.steps=1 train.pretrain.warmup_steps=0 train.pretrain.learning_rate=0 &&
    finetune none muon-nolang train.finetune.optimizer=muon
  finetune base muon-rep train.finetune.optimizer=muon train.finetune.replay=0.1 ) &
wait
