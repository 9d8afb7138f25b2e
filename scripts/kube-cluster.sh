#!/usr/bin/env bash
# A real one-node Kubernetes cluster on this machine, for the cluster tests (tier 7 of the design):
# etcd, kube-apiserver, kube-controller-manager (every default controller), kube-scheduler,
# kubelet, containerd + runc, the CNI bridge and host-local plugins, kube-proxy (iptables mode)
# and CoreDNS. Pods run for real, Services and pod DNS names resolve as in a cluster.
#
#   scripts/kube-cluster.sh install        Debian packages: containerd, runc, CNI plugins, iptables,
#                                          buildah, debootstrap (root; apt-get)
#   scripts/kube-cluster.sh build          the Kubernetes binaries and helm (kube-testenv.sh build),
#                                          CoreDNS (Go module) and the pause image (once; cached)
#   scripts/kube-cluster.sh start [DIR]    start everything; prints DIR/kubeconfig
#   scripts/kube-cluster.sh stop  [DIR]    stop it, remove its pods, network and state
#   scripts/kube-cluster.sh load IMAGE...  copy images from buildah's store into the node's containerd
#
# Network (all of it on this machine): a bridge `spa0` whose address, 10.244.0.1, is the node's
# IP, where the API server, kubelet and CoreDNS listen; pods get 10.244.0.0/24 on that bridge;
# Services 10.96.0.0/24. Pods reach nothing beyond the bridge (a FORWARD rule drops it; CoreDNS
# answers cluster names only), so nothing leaves the machine.
#
# The node's containerd keeps its images under ${SPA_CACHE:-~/.cache/spa}/kube/cluster, so an
# unchanged image is imported once. Needs root (containers, iptables, a bridge).
#
# Environment: SPA_CACHE, KUBE_CLUSTER_DIR (default DIR), COREDNS_VERSION, and kube-testenv.sh's.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=scripts/kube-testenv.sh
source "$HERE/kube-testenv.sh"
log() { printf 'kube-cluster: %s\n' "$*" >&2; }

COREDNS_VERSION="${COREDNS_VERSION:-1.15.0}"
CLUSTER_CACHE="$SPA_CACHE/kube/cluster"
NODE_NAME=spa-node
NODE_IP=10.244.0.1
POD_CIDR=10.244.0.0/24
SERVICE_CIDR=10.96.0.0/24
BRIDGE=spa0
PAUSE_IMAGE=localhost/spa-pause:1
# The kernel settings kubelet rewrites at start (see restore_sysctls).
KUBELET_SYSCTLS="vm.overcommit_memory vm.panic_on_oom kernel.panic kernel.panic_on_oops"

default_dir() { echo "${KUBE_CLUSTER_DIR:-$SPA_CACHE/kube/cluster/run}"; }

# --- install / build -------------------------------------------------------------------------

cmd_install() {
    local pkgs=(containerd runc containernetworking-plugins iptables conntrack buildah debootstrap
                openssl curl)
    local missing=() p
    for p in "${pkgs[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
    if ((${#missing[@]})); then
        ((EUID == 0)) || die "the cluster tests need root to install ${missing[*]} and run pods:" \
            "run 'make test' as root, or 'make test-fast' for the tests without the cluster"
        log "installing ${missing[*]} (apt-get)"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    fi
}

build_coredns() {
    [[ -x "$BIN/coredns" ]] && { log "cached: $BIN/coredns"; return 0; }
    write_tool_module "$ROOT/src/coredns" coredns github.com/coredns/coredns "$COREDNS_VERSION"
    build_tool "$ROOT/src/coredns" "github.com/coredns/coredns@v$COREDNS_VERSION" "$BIN/coredns" \
        "-X github.com/coredns/coredns/coremain.GitCommit=v$COREDNS_VERSION"
}

build_pause_image() {
    buildah inspect --type image "$PAUSE_IMAGE" >/dev/null 2>&1 && { log "cached: $PAUSE_IMAGE"; return 0; }
    local tmp ctr
    tmp="$(mktemp -d)"
    gcc -static -O2 -o "$tmp/pause" "$HERE/cluster/pause.c"
    ctr="$(buildah from scratch)"
    buildah copy "$ctr" "$tmp/pause" /pause >/dev/null
    buildah config --entrypoint '["/pause"]' --user 65535:65535 "$ctr"
    buildah commit -q "$ctr" "$PAUSE_IMAGE" >/dev/null
    buildah rm "$ctr" >/dev/null
    rm -rf "$tmp"
    log "built $PAUSE_IMAGE"
}

cmd_build() {
    "$HERE/kube-testenv.sh" build
    build_coredns
    build_pause_image
}

# --- start -----------------------------------------------------------------------------------

containerd_sock() { echo "$1/containerd/containerd.sock"; }
ctr_() { local d="$1"; shift; ctr --address "$(containerd_sock "$d")" --namespace k8s.io "$@"; }

write_configs() {  # write_configs DIR API_PORT
    local d="$1" api_port="$2"
    mkdir -p "$d/containerd" "$d/cni/net.d" "$d/cni/ipam" "$d/kubelet" "$d/logs"
    cat >"$d/containerd/config.toml" <<EOF
version = 2
root = "$CLUSTER_CACHE/containerd"
state = "$d/containerd/state"
[grpc]
  address = "$(containerd_sock "$d")"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$PAUSE_IMAGE"
  # Processes here lack CAP_SYS_RESOURCE: runc fails to start a sandbox without this.
  restrict_oom_score_adj = true
  enable_unprivileged_ports = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$d/cni/net.d"
  [plugins."io.containerd.grpc.v1.cri".registry]
    config_path = "$d/containerd/certs.d"
EOF
    # Images are imported, never pulled: the public registries resolve to a closed local
    # port, so a pod naming an image that was not imported fails at once (ErrImagePull)
    # without any traffic leaving the machine.
    local registry
    for registry in docker.io registry-1.docker.io ghcr.io quay.io registry.k8s.io nvcr.io; do
        mkdir -p "$d/containerd/certs.d/$registry"
        printf '%s\n' 'server = "http://127.0.0.1:9"' '[host."http://127.0.0.1:9"]' \
            '  capabilities = ["pull", "resolve"]' >"$d/containerd/certs.d/$registry/hosts.toml"
    done
    cat >"$d/cni/net.d/10-spa.conflist" <<EOF
{
  "cniVersion": "1.0.0",
  "name": "spa",
  "plugins": [
    {"type": "bridge", "bridge": "$BRIDGE", "isGateway": true, "ipMasq": false,
     "hairpinMode": true,
     "ipam": {"type": "host-local", "dataDir": "$d/cni/ipam",
              "ranges": [[{"subnet": "$POD_CIDR", "gateway": "$NODE_IP"}]],
              "routes": [{"dst": "0.0.0.0/0"}]}},
    {"type": "portmap", "capabilities": {"portMappings": true}}
  ]
}
EOF
    # Pods see only the cluster's DNS server (no upstream: nothing outside is reachable).
    printf '# cluster names only\n' >"$d/resolv.conf"
    cat >"$d/kubelet/config.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
containerRuntimeEndpoint: unix://$(containerd_sock "$d")
# This machine has hybrid cgroups (v1 controllers) and no systemd as PID 1.
cgroupDriver: cgroupfs
failCgroupV1: false
address: $NODE_IP
port: 10250
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: 0
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: false}
  x509: {clientCAFile: $d/pki/ca.crt}
authorization: {mode: AlwaysAllow}
clusterDomain: cluster.local
clusterDNS: [$NODE_IP]
resolvConf: $d/resolv.conf
failSwapOn: false
serializeImagePulls: false
# Images are imported, never pulled: garbage collection would delete them.
imageGCHighThresholdPercent: 100
# This machine's disk is shared: evict only when it is really full.
evictionHard: {memory.available: "200Mi", nodefs.available: "1Gi", imagefs.available: "1Gi"}
evictionPressureTransitionPeriod: 10s
nodeStatusUpdateFrequency: 5s
syncFrequency: 10s
fileCheckFrequency: 10s
staticPodPath: ""
podLogsDir: $d/logs/pods
EOF
    cat >"$d/kube-proxy.yaml" <<EOF
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
mode: iptables
clientConnection: {kubeconfig: $d/kubeconfig}
hostnameOverride: $NODE_NAME
bindAddress: $NODE_IP
clusterCIDR: $POD_CIDR
healthzBindAddress: 127.0.0.1:$(free_port)
metricsBindAddress: 127.0.0.1:$(free_port)
# Leave the host's conntrack table size alone.
conntrack: {maxPerCore: 0}
EOF
    cat >"$d/Corefile" <<EOF
.:53 {
    bind $NODE_IP
    errors
    kubernetes cluster.local in-addr.arpa ip6.arpa {
        kubeconfig $d/kubeconfig spa-testenv
        pods insecure
        ttl 5
    }
    cache 5
}
EOF
}

network_up() {
    ip link show "$BRIDGE" >/dev/null 2>&1 || ip link add "$BRIDGE" type bridge
    ip addr show dev "$BRIDGE" | grep -q " $NODE_IP/" || ip addr add "$NODE_IP/24" dev "$BRIDGE"
    ip link set "$BRIDGE" up
    modprobe br_netfilter 2>/dev/null || true
    sysctl -qw net.bridge.bridge-nf-call-iptables=1
    # Routing between pods and Services needs forwarding; nothing may leave the bridge.
    sysctl -qw net.ipv4.ip_forward=1
    iptables -C FORWARD -i "$BRIDGE" ! -o "$BRIDGE" -j DROP 2>/dev/null ||
        iptables -I FORWARD 1 -i "$BRIDGE" ! -o "$BRIDGE" -j DROP
}

save_sysctls() {  # save_sysctls DIR: what kubelet will change, to put back
    local d="$1" key
    [[ -f "$d/sysctls.saved" ]] && return 0
    for key in $KUBELET_SYSCTLS net.ipv4.ip_forward; do
        printf '%s=%s\n' "$key" "$(sysctl -n "$key")"
    done >"$d/sysctls.saved"
}

restore_sysctls() {  # restore_sysctls DIR [KEY...]: kubelet sets kernel.panic_on_oops=1 & co at start
    local d="$1" line
    shift
    [[ -f "$d/sysctls.saved" ]] || return 0
    while IFS= read -r line; do
        if (($#)) && [[ " $* " != *" ${line%%=*} "* ]]; then continue; fi
        sysctl -qw "$line" || true
    done <"$d/sysctls.saved"
}

spawn() {  # spawn DIR NAME COMMAND...: a daemon in its own session, logging to DIR/logs/NAME.log
    local d="$1" name="$2"
    shift 2
    setsid "$@" >"$d/logs/$name.log" 2>&1 </dev/null &
    echo $! >"$d/$name.pid"
}

wait_for() {  # wait_for SECONDS WHAT COMMAND...: returns 1 (after saying so) on time-out
    local timeout="$1" what="$2" deadline
    shift 2
    deadline=$((SECONDS + timeout))
    until "$@" >/dev/null 2>&1; do
        ((SECONDS < deadline)) || { log "error: $what not ready after ${timeout}s"; return 1; }
        sleep 1
    done
}

node_ready() {  # node_ready DIR
    [[ "$("$BIN/kubectl" --kubeconfig "$1/kubeconfig" get node "$NODE_NAME" \
        -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}')" == True ]]
}

cmd_start() {
    local d
    d="$(default_dir)"
    d="${1:-$d}"
    for c in etcd kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy coredns; do
        [[ -x "$BIN/$c" ]] || die "$BIN/$c missing: run '$0 build' first"
    done
    if [[ -f "$d/kubelet.pid" ]] && kill -0 "$(cat "$d/kubelet.pid")" 2>/dev/null; then
        log "already running: $d/kubeconfig"
        echo "$d/kubeconfig"
        return 0
    fi
    ((EUID == 0)) || die "the cluster needs root (containers, iptables, a bridge)"
    local start=$SECONDS owner
    mkdir -p "$d" && d="$(cd "$d" && pwd)"
    # One cluster at a time: the node's containerd keeps its images in one cached root.
    owner="$(cat "$CLUSTER_CACHE/owner" 2>/dev/null || true)"
    if [[ -n "$owner" && "$owner" != "$d" && -f "$owner/containerd.pid" ]] &&
        kill -0 "$(cat "$owner/containerd.pid")" 2>/dev/null; then
        die "a cluster is already running from $owner: stop it first ($0 stop $owner)"
    fi
    mkdir -p "$CLUSTER_CACHE" && echo "$d" >"$CLUSTER_CACHE/owner"
    rm -rf "$d/etcd-data" "$d/kubelet" "$d/cni" "$d/containerd/state"
    mkdir -p "$d/logs" "$CLUSTER_CACHE/containerd"
    [[ -f "$d/pki/sa.key" ]] || gen_certs "$d/pki" "IP:$NODE_IP" "IP:${SERVICE_CIDR%.0/*}.1"
    save_sysctls "$d"
    network_up

    local etcd_port peer_port api_port
    etcd_port="$(free_port)"
    peer_port="$(free_port)"
    api_port="$(free_port)"
    write_kubeconfig "$d" "$api_port" "$NODE_IP"
    write_configs "$d" "$api_port"

    spawn "$d" containerd containerd --config "$d/containerd/config.toml"
    spawn "$d" etcd "$BIN/etcd" --name spa-cluster --data-dir "$d/etcd-data" \
        --listen-client-urls "http://127.0.0.1:$etcd_port" \
        --advertise-client-urls "http://127.0.0.1:$etcd_port" \
        --listen-peer-urls "http://127.0.0.1:$peer_port" \
        --initial-advertise-peer-urls "http://127.0.0.1:$peer_port" \
        --initial-cluster "spa-cluster=http://127.0.0.1:$peer_port" \
        --unsafe-no-fsync --quota-backend-bytes 2147483648
    spawn "$d" kube-apiserver "$BIN/kube-apiserver" \
        --etcd-servers "http://127.0.0.1:$etcd_port" \
        --bind-address "$NODE_IP" --advertise-address "$NODE_IP" --secure-port "$api_port" \
        --tls-cert-file "$d/pki/apiserver.crt" --tls-private-key-file "$d/pki/apiserver.key" \
        --client-ca-file "$d/pki/ca.crt" \
        --kubelet-client-certificate "$d/pki/admin.crt" --kubelet-client-key "$d/pki/admin.key" \
        --kubelet-preferred-address-types InternalIP \
        --service-account-issuer https://kubernetes.default.svc.cluster.local \
        --service-account-key-file "$d/pki/sa.pub" \
        --service-account-signing-key-file "$d/pki/sa.key" \
        --service-cluster-ip-range "$SERVICE_CIDR" \
        --authorization-mode Node,RBAC \
        --allow-privileged=true
    wait_ready "$d" "$api_port" "$(cat "$d/kube-apiserver.pid")" "$NODE_IP" \
        "$d/logs/kube-apiserver.log"

    spawn "$d" kube-controller-manager "$BIN/kube-controller-manager" --kubeconfig "$d/kubeconfig" \
        --leader-elect=false --bind-address 127.0.0.1 --secure-port 0 \
        --service-account-private-key-file "$d/pki/sa.key" --root-ca-file "$d/pki/ca.crt" \
        --use-service-account-credentials=false --allocate-node-cidrs=false \
        --service-cluster-ip-range "$SERVICE_CIDR" \
        --concurrent-job-syncs 5
    spawn "$d" kube-scheduler "$BIN/kube-scheduler" --kubeconfig "$d/kubeconfig" \
        --leader-elect=false --bind-address 127.0.0.1 --secure-port 0
    wait_for 60 containerd ctr_ "$d" version || { tail -n 30 "$d/logs/containerd.log" >&2; exit 1; }
    import_image "$d" "$PAUSE_IMAGE"
    spawn "$d" kubelet "$BIN/kubelet" --config "$d/kubelet/config.yaml" \
        --kubeconfig "$d/kubeconfig" --hostname-override "$NODE_NAME" --node-ip "$NODE_IP" \
        --root-dir "$d/kubelet" --cert-dir "$d/kubelet/pki"
    spawn "$d" kube-proxy "$BIN/kube-proxy" --config "$d/kube-proxy.yaml"
    spawn "$d" coredns "$BIN/coredns" -conf "$d/Corefile"

    local kubectl=("$BIN/kubectl" --kubeconfig "$d/kubeconfig")
    wait_for 120 "node $NODE_NAME" node_ready "$d" || { tail -n 40 "$d/logs/kubelet.log" >&2; exit 1; }
    # kubelet has now written its kernel settings (kernel.panic_on_oops=1 among them): this is
    # a shared machine, so put back what it had.
    restore_sysctls "$d" $KUBELET_SYSCTLS
    wait_for 60 "the default ServiceAccount" "${kubectl[@]}" get serviceaccount default ||
        { tail -n 30 "$d/logs/kube-controller-manager.log" >&2; exit 1; }
    wait_for 60 "kube-proxy's rules" bash -c "iptables -t nat -S KUBE-SERVICES | grep -q default/kubernetes" ||
        { tail -n 30 "$d/logs/kube-proxy.log" >&2; exit 1; }
    log "ready in $((SECONDS - start))s: https://$NODE_IP:$api_port, KUBECONFIG=$d/kubeconfig"
    echo "$d/kubeconfig"
}

# --- images ----------------------------------------------------------------------------------

import_image() {  # import_image DIR IMAGE: from buildah's store into the node's containerd, once
    local d="$1" image="$2" id tar marker="$CLUSTER_CACHE/imported/${2//[\/:]/_}"
    id="$(buildah inspect --type image --format '{{.FromImageID}}' "$image")" ||
        die "no image $image in buildah's store"
    if [[ -f "$marker" && "$(cat "$marker")" == "$id" ]] &&
        ctr_ "$d" images list -q "name==$image" | grep -qx "$image"; then
        return 0
    fi
    # Older builds of the same repository go first, their content and snapshots with them:
    # this machine's disk holds few multi-GB images. --sync waits for containerd's garbage
    # collection, which otherwise runs later, or never when the cluster stops first (its
    # snapshots then stay in the cached root for good).
    ctr_ "$d" images list -q | grep "^${image%:*}:" | grep -vx "$image" |
        xargs -r ctr --address "$(containerd_sock "$d")" --namespace k8s.io images rm --sync \
            >/dev/null || true
    tar="$(mktemp -u "${TMPDIR:-/tmp}/spa-image.XXXXXX.tar")"
    log "importing $image into the node's containerd"
    buildah push -q --disable-compression "$image" "oci-archive:$tar:$image" >/dev/null
    ctr_ "$d" images import "$tar" >/dev/null
    rm -f "$tar"
    mkdir -p "$CLUSTER_CACHE/imported"
    echo "$id" >"$marker"
}

prune_unnamed() {  # prune_unnamed DIR: drop image records no name points to any more
    # The CRI plugin keeps each image it has seen under its ID too (`sha256:<config>`): when
    # a newer build replaces a name, that record alone holds the old image's content and
    # snapshots (several GB) in the cached root. Records of images still named stay.
    local d="$1" named
    named="$(ctr_ "$d" images list | awk 'NR > 1 && $1 !~ /^sha256:/ {print $3}')"
    ctr_ "$d" images list | awk 'NR > 1 && $1 ~ /^sha256:/ {print $1, $3}' |
        while read -r ref digest; do grep -qxF "$digest" <<<"$named" || echo "$ref"; done |
        xargs -r ctr --address "$(containerd_sock "$d")" --namespace k8s.io images rm --sync \
            >/dev/null || true
}

cmd_load() {
    local d
    d="$(default_dir)"
    (($#)) || die "usage: $0 load IMAGE..."
    local image
    for image in "$@"; do import_image "$d" "$image"; done
    prune_unnamed "$d"
}

# --- stop ------------------------------------------------------------------------------------

cmd_stop() {
    local d
    d="$(default_dir)"
    d="${1:-$d}"
    [[ -d "$d" ]] || return 0
    stop_pid "$d/kubelet.pid"
    if [[ -S "$(containerd_sock "$d")" ]]; then
        # Every pod's containers and sandboxes (their processes, mounts and veths).
        local task
        for task in $(ctr_ "$d" tasks list -q 2>/dev/null); do
            ctr_ "$d" tasks kill -s SIGKILL "$task" >/dev/null 2>&1 || true
        done
        sleep 1
        for task in $(ctr_ "$d" tasks list -q 2>/dev/null); do
            ctr_ "$d" tasks delete -f "$task" >/dev/null 2>&1 || true
        done
        ctr_ "$d" containers list -q 2>/dev/null | xargs -r ctr --address "$(containerd_sock "$d")" \
            --namespace k8s.io containers delete >/dev/null 2>&1 || true
    fi
    local c
    for c in coredns kube-proxy kube-scheduler kube-controller-manager kube-apiserver etcd containerd; do
        stop_pid "$d/$c.pid"
    done
    "$BIN/kube-proxy" --cleanup >/dev/null 2>&1 || true
    # Leftover mounts of pods (volumes, sandboxes' /dev/shm) under the run directory.
    grep -o " $d/[^ ]*" /proc/mounts | sort -r | xargs -r -n1 umount -l 2>/dev/null || true
    iptables -D FORWARD -i "$BRIDGE" ! -o "$BRIDGE" -j DROP 2>/dev/null || true
    ip link del "$BRIDGE" 2>/dev/null || true
    ip -o link show type veth 2>/dev/null | awk -F'[ @:]+' '$2 ~ /^veth/ {print $2}' |
        xargs -r -n1 ip link del 2>/dev/null || true
    restore_sysctls "$d"
    rm -f "$d/sysctls.saved"
    [[ "$(cat "$CLUSTER_CACHE/owner" 2>/dev/null)" != "$d" ]] || rm -f "$CLUSTER_CACHE/owner"
    rm -rf "$d/etcd-data" "$d/kubelet" "$d/cni" "$d/containerd/state"
    log "stopped ($d)"
}

[[ "${BASH_SOURCE[0]}" == "$0" ]] || return 0

case "${1:-}" in
install) cmd_install ;;
build) cmd_build ;;
start) shift; cmd_start "$@" ;;
stop) shift; cmd_stop "$@" ;;
load) shift; cmd_load "$@" ;;
*) sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2 ;;
esac
