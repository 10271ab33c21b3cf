#!/usr/bin/env bash
# Reproduce the shipped demonstration model: service/models/sonomask-demo-n.{pt,onnx,json}.
#
# The steps live in service/research/default_model.py:
# - 1,000 training and 300 validation phantoms from fixed seeds,
# - two thirds of the hc18 head images as extra training negatives,
# - stage 1: 16 epochs of YOLOv8n from its .yaml at 320 px on the CPU,
# - stage 2: 16 more epochs from stage 1's best weights on 1,000 new phantoms,
# - stage 3: 38 more epochs from stage 2's best weights on 1,500 new phantoms,
# - the best-F1 confidence on the validation split, and the ONNX export,
# - metrics on a fresh phantom test set and on real negatives the model never saw.
# The three stages took 52, 37 and about 100 minutes on two CPU cores. Nothing is downloaded.
#
# Usage: scripts/train_default_model.sh [WORK_DIR]   (default: runs/default-model)
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
work_dir="${1:-$repo_root/runs/default-model}"
real_data="${SONOMASK_REAL_DATA:-$repo_root/../shared/data/real}"
python="${PYTHON:-$repo_root/.venv/bin/python}"

if [[ ! -d "$real_data/hc18" ]]; then
    echo "real data not found at $real_data (expected hc18/, stills/, video/);" \
        "set SONOMASK_REAL_DATA to its folder" >&2
    exit 2
fi

export YOLO_OFFLINE=1
cd "$repo_root"
"$python" -m service.research.default_model all \
    --work "$work_dir" --hc18 "$real_data/hc18" --real "$real_data"
