#!/usr/bin/env bash
# Sets up everything the test suite needs in ./.venv: aujax's requirements, the test-only packages
# (Quantus, PyTorch + Zennit for the LRP agreement test) and Debian's chromium for the report test.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/pip install -q --upgrade pip
.venv/bin/pip install -q -r requirements.txt -r tests/requirements.txt
# quantus pins opencv-python, which would replace mediapipe's opencv-contrib-python: install it alone
.venv/bin/pip install -q --no-deps quantus==0.6.0
if [ "${AUJAX_SKIP_TORCH:-0}" != 1 ]; then
  # zennit 1.0 needs Python >= 3.11.11; 0.5.1 works with torch 2.14.1 + torchvision 0.29.1
  .venv/bin/pip install -q torch==2.14.1 torchvision==0.29.1 zennit==0.5.1 \
    || echo "tests/setup.sh: torch/zennit not installed: the Zennit agreement test will skip"
fi
if ! command -v chromium >/dev/null && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
    || echo "tests/setup.sh: chromium not installed: the report browser test will skip"
fi
