#!/usr/bin/env bash
# The whole test suite: fetches the default model and llama.cpp's source package (tokenizer test
# vectors) if missing, checks formatting and lints, then runs every test (the test profile is
# optimized: tests run the real model).
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v cargo >/dev/null 2>&1; then
  echo "cargo not found: install Rust (rustup) first" >&2
  exit 1
fi
RYZANSTEIN_MODEL="$(scripts/fetch-model.sh)"
export RYZANSTEIN_MODEL
# llama.cpp's tokenizer test vectors (models/ggml-vocab-*) for tests/tokenizer_vectors.rs.
RYZANSTEIN_VOCAB_DIR="$(scripts/fetch-llama-cpp-sdist.sh)/vendor/llama.cpp/models"
export RYZANSTEIN_VOCAB_DIR

# The official openai Python package, for tests/openai_client.py (run by
# tests/server_binary.rs): installed once into the cache, found through this variable.
OPENAI_VERSION="3.54.0"
OPENAI_DIR="${RYZANSTEIN_CACHE:-$HOME/.cache/ryzanstein}/py/openai-$OPENAI_VERSION"
PY="${PYTHON:-python3}"
if ! PYTHONPATH="$OPENAI_DIR" "$PY" -c "import openai" >/dev/null 2>&1; then
  echo "installing openai==$OPENAI_VERSION into $OPENAI_DIR ..." >&2
  rm -rf "$OPENAI_DIR"
  mkdir -p "$(dirname "$OPENAI_DIR")"
  # pip's resolver warns about packages outside --target; only the exit code matters here.
  "$PY" -m pip install --quiet --disable-pip-version-check --no-warn-script-location \
    --target "$OPENAI_DIR" "openai==$OPENAI_VERSION" >/dev/null 2>"$OPENAI_DIR.log" || {
    cat "$OPENAI_DIR.log" >&2
    exit 1
  }
fi
export RYZANSTEIN_OPENAI_PYTHONPATH="$OPENAI_DIR"

# Debian packages the deploy tests use, installed once when missing (as root with apt-get;
# otherwise those tests skip with a message): nginx for tests/deploy_nginx.rs, which runs it
# as its own child, never the system service; systemd for the systemd-analyze of
# tests/deploy_systemd.rs.
export PATH="$PATH:/usr/sbin"
apt_install_once() { # COMMAND PACKAGE...: the first package that installs and provides COMMAND
  local cmd="$1" pkg own_policy="" log="${TMPDIR:-/tmp}/ryzanstein-apt-$1.log"
  shift
  command -v "$cmd" >/dev/null 2>&1 && return 0
  if ! command -v apt-get >/dev/null 2>&1 || [ "$(id -u)" != 0 ]; then
    echo "$cmd is missing and cannot be installed here: its tests will skip" >&2
    return 0
  fi
  echo "installing $cmd ..." >&2
  # A policy-rc.d that answers 101 keeps a package from starting its system service.
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
    own_policy=1
  fi
  apt-get update -qq >"$log" 2>&1 || true
  for pkg in "$@"; do
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$pkg" \
      >>"$log" 2>&1 && command -v "$cmd" >/dev/null 2>&1 && break
  done
  if [ -n "$own_policy" ]; then rm -f /usr/sbin/policy-rc.d; fi
  command -v "$cmd" >/dev/null 2>&1 || {
    cat "$log" >&2
    echo "$cmd could not be installed: its tests will skip" >&2
  }
}
apt_install_once nginx nginx-light nginx
apt_install_once systemd-analyze systemd

cargo fmt --all -- --check
cargo clippy --all-targets --quiet -- -D warnings
log="$(mktemp)"
trap 'rm -f "$log"' EXIT
status=0
# fault-injection: the hooks tests/faults.rs needs to make a handler, a dispatcher or a load
# panic (src/faults.rs); release builds have none.
cargo test --quiet --no-fail-fast --features fault-injection "$@" 2>&1 | tee "$log" || status=$?
# Every criterion bench once, in test mode (about a minute): they still build and run.
if [ "$#" -eq 0 ]; then
  cargo test --quiet --benches 2>&1 | grep -v '^$' || status=$?
fi
# One closing line for the whole suite (cargo prints one per test binary, the last being the
# doc tests, which may hold none).
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($i ~ /^passed;?$/) p += $(i-1); if ($i ~ /^failed;?$/) f += $(i-1) } }
     END { printf "tests: %d passed, %d failed\n", p, f }' "$log"
exit "$status"
