#!/usr/bin/env bash
# Install what the project needs on a fresh machine, from any PATH (a login shell's included):
#
#   scripts/setup.sh run     uv, then what `spa run` needs: the core, training, the embedded
#                            model's wheel, the report, and the native module (maturin)
#   scripts/setup.sh test    the same plus the test tools (pytest, kopf, llama.cpp's server,
#                            Chromium for the report's browser test, ...)
#   scripts/setup.sh tools   print the tools the Makefile's recipes use, as they find them
#
# uv is the project's own: a pinned version installed under $SPA_CACHE (from PyPI, with the
# machine's python3), so nothing depends on the caller's PATH. Downloads and builds are
# cached outside the repository (uv's cache, $CARGO_TARGET_DIR), so a second clone sets up
# in seconds. The Makefile passes UV, UV_VERSION, SPA_CACHE and CARGO_TARGET_DIR.
set -euo pipefail
cd "$(dirname "$0")/.."

SPA_CACHE="${SPA_CACHE:-$HOME/.cache/spa}"
UV_VERSION="${UV_VERSION:-0.13.9}"
UV="${UV:-$SPA_CACHE/uv/$UV_VERSION/bin/uv}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$SPA_CACHE/cargo-target}"
export UV_SYSTEM_CERTS="${UV_SYSTEM_CERTS:-1}"

say() { printf 'setup: %s\n' "$*" >&2; }
die() { say "error: $*"; exit 1; }

install_uv() {
    if [[ "$UV" == */* ]]; then [[ -x "$UV" ]] && return 0; else command -v "$UV" >/dev/null && return 0; fi
    [[ "$UV" == "$SPA_CACHE/uv/$UV_VERSION/bin/uv" ]] || die "UV=$UV is not an executable"
    command -v python3 >/dev/null || die "python3 (3.11 or later) is required"
    say "installing uv $UV_VERSION into $SPA_CACHE/uv/$UV_VERSION (from PyPI)"
    local dest="$SPA_CACHE/uv/$UV_VERSION"
    # --target: a private folder, so neither the user site nor an externally managed
    # system Python is touched.
    python3 -m pip install --quiet --disable-pip-version-check --target "$dest.tmp" \
        "uv==$UV_VERSION" || die "pip could not install uv $UV_VERSION"
    rm -rf "$dest" && mv "$dest.tmp" "$dest"
}

need_cargo() {
    command -v cargo >/dev/null 2>&1 ||
        die "cargo (Rust) is required to build the native module: https://rustup.rs"
}

sync() {  # sync ARGS...: uv sync from the lock, saying what it does while it waits
    # --locked: the lock file is the pin; a stale lock fails here instead of drifting.
    local start=$SECONDS
    if [[ ! -d .venv ]]; then
        say "first set-up of this clone: installing the locked packages (with an empty cache,"
        say "torch and its CUDA libraries download ~4 GB into $("$UV" cache dir), kept for"
        say "later clones) and building the native module with cargo (a few minutes on 2 cores)"
    else
        say "syncing .venv with uv.lock"
    fi
    "$UV" sync --locked "$@"
    say "Python environment ready in $((SECONDS - start)) s"
}

cmd_run() {
    install_uv
    need_cargo
    # --inexact: packages a test set-up added (pytest, llama.cpp's server) are kept.
    sync --no-dev --extra train --extra embedded --extra report --inexact
}

cmd_test() {
    install_uv
    need_cargo
    # `make lint` needs rustfmt and clippy; rustup installs them where they are missing.
    if command -v rustup >/dev/null 2>&1; then
        rustup component add rustfmt clippy >/dev/null 2>&1 ||
            say "could not add rustfmt/clippy (make lint needs them)"
    fi
    if [[ ! -d .venv ]] || ! "$UV" run --no-sync python -c 'import llama_cpp' >/dev/null 2>&1; then
        say "the tests need llama.cpp's server: compiling llama-cpp-python (~4 minutes on 2 cores, once)"
    fi
    sync --all-extras
    need_chromium
}

need_chromium() {  # the report's browser test drives Debian's Chromium (root: apt-get)
    command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 && return
    if [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null 2>&1; then
        say "the report's browser test needs Chromium: installing Debian's chromium (apt-get, once)"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium >/dev/null
    else
        say "no chromium on PATH: the report's browser test will fail (install your system's chromium)"
    fi
}

cmd_tools() {
    local missing=0 tool
    install_uv
    printf '%-8s %s\n' uv "$("$UV" --version) ($(command -v "$UV" || echo "$UV"))"
    for tool in python3 cargo go; do
        if command -v "$tool" >/dev/null 2>&1; then
            local version
            if [[ $tool == go ]]; then version="$(go version)"; else version="$("$tool" --version 2>&1 | head -n1)"; fi
            printf '%-8s %s (%s)\n' "$tool" "$version" "$(command -v "$tool")"
        else
            printf '%-8s MISSING\n' "$tool"; missing=1
        fi
    done
    if [[ -d .venv ]]; then
        printf '%-8s %s\n' venv "$("$UV" run --no-sync python --version)"
    fi
    ((missing == 0)) || die "a tool the recipes need is missing from PATH"
}

case "${1:-}" in
run) cmd_run ;;
test) cmd_test ;;
tools) cmd_tools ;;
*) sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2 ;;
esac
