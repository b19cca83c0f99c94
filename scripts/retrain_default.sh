#!/usr/bin/env bash
# Rebuilds the bundled default model from nothing: photos, training, evaluation, export.
# Usage: scripts/retrain_default.sh [WORKDIR]   (about 1.5 hours on 2 idle CPU cores; resumable: run it again)
set -euo pipefail
WORK="${1:-work}"
mkdir -p "$WORK"
[ -f "$WORK/photos/manifest.tsv" ] || titok data photos "$WORK/photos"

resume=()
[ -f "$WORK/run/checkpoint.pt" ] && resume=(--resume)
titok train --preset tiny --data "$WORK/photos/train" --eval-data "$WORK/photos/dev-eval" --out "$WORK/run" \
    --steps 7500 --warmup 100 --lr 2e-3 --batch-size 16 --eval-every 250 --save-every 100 --threads 2 \
    "${resume[@]}"

# Export, evaluate the exported file itself, then embed those figures in the shipped artifact.
titok export --checkpoint "$WORK/run/checkpoint.pt" --out "$WORK/default.pt" --fp16 --name titok-tiny-128px-32tok
titok eval --artifact "$WORK/default.pt" --data "$WORK/photos/dev-eval" --out "$WORK/eval"
titok export --checkpoint "$WORK/run/checkpoint.pt" --out service/models/default.pt --fp16 \
    --name titok-tiny-128px-32tok --eval-json "$WORK/eval/eval.json"
