#!/usr/bin/env bash
# Set up the environment and run the demo: precompute, distill and evaluate on the bundled clips.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup-env.sh
.venv/bin/teachclip-pipeline demo --output-dir "${1:-demo-output}"
