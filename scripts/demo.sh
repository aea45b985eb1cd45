#!/usr/bin/env bash
# The first thing a new user runs: install medcnn into its own venv, then train the synthetic Grad-CAM
# localisation bundle, evaluate it on a held-out seed and write heatmaps / masks.
# Results go to runs/demo/ (the committed weights in bundles/*/models are never overwritten).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$root/scripts/setup_venv.sh"
py="${MEDCNN_VENV:-$root/.venv}/bin/python"
bundle="$root/bundles/synthetic_localisation"
out="$root/runs/demo"
mkdir -p "$out"
start=$(date +%s)
cd "$bundle"
"$py" -m monai.bundle run --config_file configs/train.json \
  --output_dir "$out" --ckpt_dir "$out/models"
"$py" -m monai.bundle run --config_file "['configs/train.json','configs/evaluate.json']" \
  --output_dir "$out" --ckpt_dir "$out/models"
"$py" -m monai.bundle run --config_file "['configs/train.json','configs/localise.json']" \
  --output_dir "$out" --ckpt_dir "$out/models"
echo
echo "medcnn demo finished in $(( $(date +%s) - start )) s (install excluded). Figures: $out/metrics.json"
cat "$out/metrics.json"
echo "Heatmap / mask overlays: $out/localise/"
