#!/usr/bin/env bash
# Build (and with --push, push) the operator, worker and trainer images with one version:
#
#   images/build.sh [VERSION] [--push]     VERSION defaults to the project's version
#
# Needs docker with buildx (not available on the development machine; CI builds them, see
# .github/workflows/images.yml). REGISTRY overrides ghcr.io/spa-dev.
set -euo pipefail
cd "$(dirname "$0")/.."
version="${1:-$(sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml | head -1)}"
shift || true
export VERSION="$version"
exec docker buildx bake -f images/docker-bake.hcl "$@"
