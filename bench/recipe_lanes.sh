#!/bin/bash
# Third batch of recipe levers (bench/RESULTS.md, "Muon against AdamW, one at a time"), with
# bench/recipe_levers.sh's functions. Started detached (setsid) so that it outlives one call of the
# lent machine; later calls collect $OUT. Phase 1 runs alone, for step times: a pretrain, then a
# Muon and an AdamW fine-tune of 3,000 steps one after the other. Phase 2 runs three lanes side by side.
# Usage: PROJECT=DIR REPO=acm-checkout OUT=results-folder setsid bench/recipe_lanes.sh
set -u
source "$REPO/bench/recipe_levers.sh"
SAMPLES=128
M=train.finetune.optimizer=muon
MED="model.preset=medium tokenizer.vocab_size=16000"
stamp phase1
pretrain base || exit 1
finetune base muon-s2 $M train.finetune.seed=2
finetune base adamw-s2 train.finetune.seed=2
stamp phase2
( finetune base muon-e3 $M train.finetune.steps=9000 ) &
( pretrain med0 $MED train.pretrain.steps=1 train.pretrain.warmup_steps=0 train.pretrain.learning_rate=0 &&
    finetune med0 med-muon $MED $M ) &
( finetune base muon-p8 $M train.finetune.pairs_share=0.8
  finetune base muon-rep $M train.finetune.replay=0.1
  finetune base muon-s3 $M train.finetune.seed=3 ) &
wait
stamp alldone
