#!/usr/bin/env bash
# The first thing a new user runs: install medcnn into its own venv, then train the synthetic Grad-CAM
# localisation bundle, evaluate it on a held-out seed and write heatmaps / masks.
# Results go to runs/demo/ (training writes runs/demo/models/model.pt; the committed weights in
# bundles/*/models are never overwritten).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# MEDCNN_SKIP_INSTALL=1 reuses an existing environment as it is
[ "${MEDCNN_SKIP_INSTALL:-0}" = "1" ] || "$root/scripts/setup_venv.sh"
py="${MEDCNN_VENV:-$root/.venv}/bin/python"
bundle="$root/bundles/synthetic_localisation"
out="$root/runs/demo"
# torch threads (0 = torch's default); on a busy shared machine MEDCNN_THREADS=1 is much faster
threads="${MEDCNN_THREADS:-0}"
mkdir -p "$out"
start=$(date +%s)
cd "$bundle"
"$py" -m monai.bundle run --config_file configs/train.json --output_dir "$out" --num_threads "$threads"
"$py" -m monai.bundle run --config_file "['configs/train.json','configs/evaluate.json']" \
  --output_dir "$out" --ckpt_path "$out/models/model.pt" --num_threads "$threads"
"$py" -m monai.bundle run --config_file "['configs/train.json','configs/localise.json']" \
  --output_dir "$out" --ckpt_path "$out/models/model.pt" --num_threads "$threads"
echo
echo "medcnn demo finished in $(( $(date +%s) - start )) s (install excluded). Figures: $out/metrics.json"
cat "$out/metrics.json"
echo "Heatmap / mask overlays: $out/localise/"
