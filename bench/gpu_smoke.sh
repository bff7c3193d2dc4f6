#!/usr/bin/env bash
# Every stage and command once on a GPU machine, as a new user would run them after a first run:
# a fresh project through `acm pipeline run`, then generation (streamed with a stop string, a batch,
# JSON), an evaluation, the three exports, and a training stage stopped by a hang-up (SIGHUP) and
# resumed. Prints one JSON line per command: its exit status, the status expected, its seconds and
# the last line it wrote on stderr. MLX must see a GPU (bench/first_run.py --gpu refuses otherwise).
#
# usage: bench/gpu_smoke.sh DIR [BUDGET]      (DIR: the project to make, BUDGET its pipeline's, default 3m;
#        a DIR that already holds runs/ is used as it is: no first run, any device)
set -u
dir=${1:?usage: bench/gpu_smoke.sh DIR [BUDGET]}
budget=${2:-3m}
root=$(cd "$(dirname "$0")/.." && pwd)
export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}"
acm() { python3 -m core.cli "$@"; }

# one JSON line: NAME, expected status, then the command (run in the project, stderr kept for the line)
check() {
    local name=$1 want=$2
    shift 2
    local start end rc last
    start=$(date +%s.%N)
    (cd "$dir" && "$@") >"$dir.$name.out" 2>"$dir.$name.err"
    rc=$?
    end=$(date +%s.%N)
    last=$(tail -n 1 "$dir.$name.err" | tr -d '"\\' | cut -c1-200)
    printf '{"command": "%s", "status": %d, "expected": %d, "ok": %s, "s": %s, "stderr_last": "%s"}\n' \
        "$name" "$rc" "$want" "$([ "$rc" = "$want" ] && echo true || echo false)" \
        "$(awk "BEGIN { printf \"%.1f\", $end - $start }")" "$last"
}

if [ ! -d "$dir/runs" ]; then
    mkdir -p "$dir"
    python3 "$root/bench/first_run.py" --gpu --time "$budget" --keep "$dir" >"$dir.first_run.json" 2>"$dir.first_run.err"
    echo "{\"command\": \"first_run\", \"status\": $?, \"result\": $(cat "$dir.first_run.json" 2>/dev/null || echo null)}"
fi

run=$(cd "$dir" && ls runs | grep -v '^\.' | head -n 1)
check generate_stream 0 acm generate '#!/bin/bash
# list the files in a directory
' -e --stop done --max-tokens 120
check generate_n 0 acm generate '# compress a folder' --n 4 --syntax-check --max-tokens 80
check generate_json 0 acm generate '# show disk usage' --json --n 2 --max-tokens 80
check eval 0 acm eval --samples 16 --max-tokens 120
check export_mlx 0 acm export "$run" --to "$dir.mlx"
check export_hf 0 acm export "$run" --to "$dir.hf" --format hf
check export_gguf 0 acm export "$run" --to "$dir.gguf" --format gguf

# the fine-tune resumed past its plan, stopped mid-way by a hang-up (a checkpoint, exit 129), resumed again
(cd "$dir" && exec python3 -m core.cli train finetune --run "$run" --resume --steps ${SMOKE_STEPS:-4000} >"$dir.hup.out" 2>"$dir.hup.err") &
pid=$!
for _ in $(seq 1 240); do
    grep -q 'step *[1-9][0-9][0-9]' "$dir.hup.out" "$dir.hup.err" 2>/dev/null && break
    sleep 0.5
done
kill -HUP "$pid"
wait "$pid"
echo "{\"command\": \"finetune_hangup\", \"status\": $?, \"expected\": 129, \"stderr_last\": \"$(tail -n 1 "$dir.hup.err" | tr -d '"\\' | cut -c1-200)\"}"
check finetune_resume 0 acm train finetune --run "$run" --resume --max-steps 20
check runs 0 acm runs
