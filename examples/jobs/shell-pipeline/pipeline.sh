#!/usr/bin/env bash
# Keep the rows with a positive value from every raw CSV, then count them.
set -euo pipefail
mkdir -p processed
for f in raw/*.csv; do
  { head -n 1 "$f"; tail -n +2 "$f" | awk -F, '$2 > 0'; } > "processed/$(basename "$f")"
done
rows=$(cat processed/*.csv | grep -vc '^id,' || true)
echo "kept ${rows} positive row(s)" | tee summary.txt
