# Sourced by the benches that time the README recipe's stages (bench/app_ready.sh, bench/command_ab.sh,
# bench/command_ready.sh), with $dir and $here set: `acm` runs this checkout's command line in $dir,
# and `recipe_project` makes $dir, unless it already holds token shards, a project on the offline
# data with the recipe's stages (tiny, Muon, a 1,200-step pretrain and a 1,500-step fine-tune,
# validated every 250 steps, 2 live samples a check), the kernel caches filled by a short pretrain
# and fine-tune in run `warm`; `base_run` copies that run's pretrain alone to run `base`.
acm() { (cd "$dir" && PYTHONPATH="$here${PYTHONPATH:+:$PYTHONPATH}" python3 -m core.cli "$@"); }

recipe_project() {
  mkdir -p "$dir"
  [ -f "$dir/data/tokens/language/manifest.json" ] && return 0
  acm config set model.preset tiny >/dev/null
  acm config set train.pretrain.steps 1200 >/dev/null
  acm config set train.finetune.steps 1500 >/dev/null
  acm data fetch language >/dev/null && acm data fetch code >/dev/null
  acm tokenizer train >/dev/null && acm prepare >/dev/null
  acm train pretrain --run warm --steps 260 >/dev/null && acm train finetune --run warm --steps 80 >/dev/null
}

base_run() {  # run `base`, the fine-tunes' start: warm's pretrain alone
  [ -d "$dir/runs/base" ] && return 0
  cp -r "$dir/runs/warm" "$dir/runs/base" && rm -rf "$dir/runs/base/finetune"
}
