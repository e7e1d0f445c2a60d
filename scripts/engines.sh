#!/usr/bin/env bash
# containerd and Docker on the local cluster's nodes, beside podman (issue 14). Each node
# gets its own containerd (what nerdctl and Kubernetes drive; overlayfs snapshotter) and
# its own dockerd (overlay2), started inside the node's mount namespace with the node's
# own /var/lib/containerd, /run/containerd, /var/lib/docker and /run/docker bound from
# /var/lib/imgsave-cluster/nodes/NODE/, so their containers and overlay mounts are
# node-local like podman's. No iptables or bridge changes; podman is not disturbed.
#
#   scripts/engines.sh up                          install, start both daemons on every
#                                                  node, load the base image into each
#   scripts/engines.sh down                        stop them (containers go with them)
#   scripts/engines.sh status                      which daemon runs where
#   scripts/engines.sh session NODE USER NAME ENGINE [IMAGE]   USER's session container
#                                                  NAME under ENGINE (containerd | docker);
#                                                  containerd's default image is the base
#                                                  pulled from the local registry (as a
#                                                  Kubernetes node pulls it), docker's the
#                                                  base loaded from an archive
#
# Inside a node: `ctr -n k8s.io ...` and `docker -H unix:///run/docker/docker.sock ...`.
# Needs the cluster up (scripts/cluster.sh up) for the node namespaces and base image.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
SAY_AS=engines
# shellcheck source=scripts/lib.sh
source "$HERE/lib.sh"
close_inherited_descriptors
CLUSTER="$HERE/cluster.sh"
STATE=/var/lib/imgsave-cluster
LOGS=/var/log/imgsave-cluster
NODES=(n1 n2)
BASE_IMAGE=localhost/imgsave-base:latest
REGISTRY_BASE=127.0.0.1:5000/library/imgsave-base:latest  # the same image, in the registry
NAMESPACE=k8s.io
DOCKER_SOCKET=/run/docker/docker.sock
PACKAGES=(containerd docker.io)
# node-local paths inside each node's mount namespace -> where they live on the host
BINDS=(/var/lib/containerd:containerd-root /run/containerd:run-containerd
       /var/lib/docker:docker-root /run/docker:run-docker)

in_node() { "$CLUSTER" node-exec "$@"; }

bind_node_dirs() {  # the node's own engine directories, bound once into its namespace
    local n=$1 pair target source
    for pair in "${BINDS[@]}"; do
        target=${pair%%:*}
        source="$STATE/nodes/$n/${pair#*:}"
        mkdir -p "$source" "$target"
        if ! in_node "$n" mountpoint -q "$target"; then
            in_node "$n" mount --bind "$source" "$target"
        fi
    done
}

containerd_up() { in_node "$1" ctr version >/dev/null 2>&1; }
docker_up() { in_node "$1" docker -H "unix://$DOCKER_SOCKET" version >/dev/null 2>&1; }

start_containerd() {
    local n=$1 config="$STATE/nodes/$1/containerd.toml"
    if containerd_up "$n"; then return 0; fi
    say "starting containerd on $n"
    # the defaults, which are node-local here: root /var/lib/containerd, state and socket
    # in /run/containerd (both bound above); the CRI plugin is not needed
    containerd config default | sed -e 's|^disabled_plugins = \[\]|disabled_plugins = ["io.containerd.grpc.v1.cri"]|' >"$config"
    in_node "$n" setsid -f containerd --config "$config" >>"$LOGS/containerd-$n.log" 2>&1
    wait_for 30 "containerd on $n" containerd_up "$n"
}

start_docker() {
    local n=$1
    if docker_up "$n"; then return 0; fi
    say "starting dockerd on $n"
    # its own containerd (under /run/docker), no bridge, no iptables: the host's network
    # is left alone; containers run with --network none
    in_node "$n" setsid -f dockerd --iptables=false --ip-forward=false --ip-masq=false \
        --bridge=none --storage-driver overlay2 --data-root /var/lib/docker \
        --exec-root /run/docker --pidfile /run/docker/dockerd.pid \
        -H "unix://$DOCKER_SOCKET" >>"$LOGS/dockerd-$n.log" 2>&1
    wait_for 60 "dockerd on $n" docker_up "$n"
}

load_base_image() {  # podman's base image, saved as archives, into both engines
    local n=$1 dir="$STATE/nodes/$1/archives"
    mkdir -p "$dir"
    if ! in_node "$n" ctr -n "$NAMESPACE" images ls -q "name==$BASE_IMAGE" 2>/dev/null | grep -q .; then
        say "importing $BASE_IMAGE into containerd on $n"
        rm -f "$dir/base.oci.tar"
        in_node "$n" podman save -q --format oci-archive -o "$dir/base.oci.tar" "$BASE_IMAGE"
        # a fresh containerd's first import was seen to fail once ("content digest ...
        # not found"); the second goes through
        in_node "$n" ctr -n "$NAMESPACE" images import --base-name localhost/imgsave-base \
            --index-name "$BASE_IMAGE" "$dir/base.oci.tar" >/dev/null 2>&1 ||
            in_node "$n" ctr -n "$NAMESPACE" images import --base-name localhost/imgsave-base \
                --index-name "$BASE_IMAGE" "$dir/base.oci.tar" >/dev/null
    fi
    if ! in_node "$n" ctr -n "$NAMESPACE" images ls -q "name==$REGISTRY_BASE" 2>/dev/null | grep -q .; then
        say "pulling $REGISTRY_BASE into containerd on $n"
        in_node "$n" podman push -q --tls-verify=false "$BASE_IMAGE" "$REGISTRY_BASE"
        in_node "$n" ctr -n "$NAMESPACE" images pull --plain-http "$REGISTRY_BASE" >/dev/null
    fi
    if ! in_node "$n" docker -H "unix://$DOCKER_SOCKET" image inspect "$BASE_IMAGE" >/dev/null 2>&1; then
        say "loading $BASE_IMAGE into docker on $n"
        rm -f "$dir/base.docker.tar"
        in_node "$n" podman save -q --format docker-archive -o "$dir/base.docker.tar" "$BASE_IMAGE"
        in_node "$n" docker -H "unix://$DOCKER_SOCKET" load -i "$dir/base.docker.tar" >/dev/null
    fi
}

cmd_up() {
    install_packages "${PACKAGES[@]}"
    mkdir -p "$LOGS"
    local n
    for n in "${NODES[@]}"; do
        bind_node_dirs "$n"
        start_containerd "$n"
        start_docker "$n"
        load_base_image "$n"
    done
    say "up: containerd and dockerd on ${NODES[*]}"
}

cmd_down() {
    local n pid
    for n in "${NODES[@]}"; do
        pid=$(cat "$STATE/nodes/$n/run-docker/dockerd.pid" 2>/dev/null || true)
        if [ -n "$pid" ]; then kill "$pid" 2>/dev/null || true; fi
        in_node "$n" pkill -x containerd 2>/dev/null || true
    done
    say "down"
}

cmd_status() {
    local n
    for n in "${NODES[@]}"; do
        if containerd_up "$n"; then echo "containerd $n: running"; else echo "containerd $n: stopped"; fi
        if docker_up "$n"; then echo "dockerd $n: running"; else echo "dockerd $n: stopped"; fi
    done
}

session() {  # session NODE USER NAME ENGINE [IMAGE]
    local n=$1 user=$2 name=$3 engine=$4 image=${5:-}
    case "$engine" in
        containerd)
            in_node "$n" ctr -n "$NAMESPACE" run -d --label "imgsave.owner=$user" \
                "${image:-$REGISTRY_BASE}" "$name" sleep infinity >/dev/null ;;
        docker)
            in_node "$n" docker -H "unix://$DOCKER_SOCKET" run -d --name "$name" \
                --label "imgsave.owner=$user" --network none "${image:-$BASE_IMAGE}" sleep infinity ;;
        *) say "engine must be containerd or docker (podman: scripts/cluster.sh session)"; return 2 ;;
    esac
}

case "${1:-}" in
    up) cmd_up ;;
    down) cmd_down ;;
    status) cmd_status ;;
    session) shift; session "$@" ;;
    *) sed -n '2,21p' "$0"; exit 2 ;;
esac
