#!/usr/bin/env bash
# The training checks that need a GPU (issue 7): the gpu-marked tests and the throughput
# benchmark, for a session lent a GPU machine whose Python has PyTorch, transformers and
# accelerate but not the rest of the trainer's stack, and which cannot download.
#
#   scripts/gpu-check.sh wheels     # here: the missing packages, at uv.lock's versions, into .whl/
#   scripts/gpu-check.sh run [OUT]  # there: install them, run the checks, results into OUT
#
# `run` writes OUT/gpu-tests.log and OUT/train_throughput.jsonl (one JSON line per shape,
# lengths mode and variant; see `python -m spa_core.training.throughput --help`): the 135m,
# 1b and 8b-8l shapes, each on the length mix and on fixed lengths. SHAPES, LENGTHS and
# VARIANTS override them; PYTHON the interpreter (default python3).
set -euo pipefail
cd "$(dirname "$0")/.."

# What the trainer imports that such an image lacks or has older, at uv.lock's versions.
# huggingface-hub stays the image's: transformers takes >= 1.31, and 2.x needs httpx2.
PACKAGES=(transformers trl datasets dill multiprocess pydantic pydantic-core annotated-types
          typing-inspection tokenizers safetensors accelerate)
WHEELS=.whl
PYTHON=${PYTHON:-python3}

locked_version() {  # the version uv.lock pins for package $1
  awk -v name="$1" '$0 == "name = \"" name "\"" { getline; gsub(/version = |"/, ""); print; exit }' uv.lock
}

case "${1:-}" in
  wheels)
    grep -qxF "/$WHEELS/" .git/info/exclude 2>/dev/null || echo "/$WHEELS/" >> .git/info/exclude
    rm -rf "$WHEELS" && mkdir -p "$WHEELS"
    for package in "${PACKAGES[@]}"; do
      version=$(locked_version "$package")
      [[ -n "$version" ]] || { echo "gpu-check: $package is not in uv.lock" >&2; exit 1; }
      python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 \
        --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux2014_x86_64 -d "$WHEELS" "$package==$version"
    done
    du -sh "$WHEELS"
    echo "gpu-check: carry $WHEELS (run's carry: [\"$WHEELS\"]), then: scripts/gpu-check.sh run \$OUT"
    ;;
  run)
    out=${2:-${OUT:-gpu-check-out}}
    mkdir -p "$out"
    "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target /tmp/spa-site "$WHEELS"/*.whl
    export PYTHONPATH="/tmp/spa-site:$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
    "$PYTHON" -c 'import torch; print("torch", torch.__version__,
      torch.cuda.get_device_name() if torch.cuda.is_available() else "(no CUDA GPU)")'
    # The project's warning filters are for its pinned versions: report, do not fail, here.
    "$PYTHON" -m pytest -p no:cacheprovider -o filterwarnings=default -m gpu -rA \
      tests/test_fast_paths.py 2>&1 | tee "$out/gpu-tests.log" || true
    read -r -a shapes <<< "${SHAPES:-135m 1b 8b-8l}"
    read -r -a lengths <<< "${LENGTHS:-mix fixed}"
    read -r -a variants <<< "${VARIANTS:-trl spa spa:chunked_logprobs=false spa:padding_free=false}"
    "$PYTHON" -m spa_core.training.throughput --shapes "${shapes[@]}" --lengths "${lengths[@]}" \
      --variant "${variants[@]}" > "$out/train_throughput.jsonl"
    cat "$out/train_throughput.jsonl"
    ;;
  *)
    sed -n '2,13p' "$0" >&2
    exit 2
    ;;
esac
