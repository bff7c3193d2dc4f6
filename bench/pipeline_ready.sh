#!/usr/bin/env bash
# `acm pipeline run` with and without the engine readied beside the token shards, side by side: a
# project on the offline data with the README recipe's pretrain (tiny, Muon, 1,200 steps validated
# every 250, 2 live samples a check), a shorter fine-tune and evaluation (FINETUNE steps; one sample a
# task), the kernel caches filled by one pipeline first, then bench/pipeline_stages.py in rounds.
#
# usage: bench/pipeline_ready.sh DIR [ROUNDS] [FINETUNE] [LANGUAGE]
#   DIR: made if missing, reused if it has a tokenizer; LANGUAGE: .txt/.md/.jsonl/.parquet files for the
#   language corpus in place of the built-in one (a larger corpus: longer token shards to make)
# Every line is JSON, also appended to $OUT/pipeline-ready.jsonl (or /tmp/pipeline-ready.jsonl).
set -eu
dir=$1 rounds=${2:-2} finetune=${3:-300} language=${4:-}
here=$(cd "$(dirname "$0")/.." && pwd)
log=${OUT:-/tmp}/pipeline-ready.jsonl
acm() { (cd "$dir" && PYTHONPATH="$here${PYTHONPATH:+:$PYTHONPATH}" python3 -m core.cli "$@"); }
mkdir -p "$dir"
if [ ! -f "$dir/data/tokenizer/tokenizer.json" ]; then
  for kv in model.preset=tiny train.pretrain.steps=1200 train.finetune.steps=$finetune eval.samples=1; do
    acm config set "${kv%%=*}" "${kv#*=}" >/dev/null
  done
  if [ -n "$language" ]; then
    acm config set data.language.source local >/dev/null
    acm config set data.language.local_paths "[\"$(realpath "$language")\"]" >/dev/null
  fi
  acm data fetch language >/dev/null && acm data fetch code >/dev/null && acm tokenizer train >/dev/null
  python3 "$here/bench/pipeline_stages.py" -c "$dir/acm.toml" --rounds 1 --modes on \
    | sed 's/^{/{"warm_up": true, /' | tee -a "$log"
fi
python3 "$here/bench/pipeline_stages.py" -c "$dir/acm.toml" --rounds "$rounds" | tee -a "$log"
