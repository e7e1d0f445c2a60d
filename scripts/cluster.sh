#!/usr/bin/env bash
# The local cluster imgsave's demo and tests run against, on one Debian 12 machine, as root:
# munge, MariaDB, slurmdbd, slurmctld, two slurmd nodes (n1, n2) each with node-local
# container storage in its own mount namespace, and a registry on 127.0.0.1:5000.
#
#   scripts/cluster.sh install   apt packages, users, config files, the imgsave runtime in
#                                /opt/imgsave and the node's privileged entry (idempotent)
#   scripts/cluster.sh up        install, then start every service that is not running
#   scripts/cluster.sh down      stop everything this script started
#   scripts/cluster.sh status    what runs, sinfo, the registry
#   scripts/cluster.sh node-exec NODE CMD...   run CMD inside NODE's mount namespace
#   scripts/cluster.sh session NODE USER NAME [--engine containerd|docker|podman]
#                                start USER's session container NAME on NODE (podman; the
#                                others after scripts/engines.sh up)
#
# Everything binds to 127.0.0.1. See docs/local-cluster.md.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
SAY_AS=cluster
# shellcheck source=scripts/lib.sh
source "$HERE/lib.sh"
close_inherited_descriptors
TEMPLATES="$HERE/../site_configs/local"
STATE=/var/lib/imgsave-cluster
RUN=/run/imgsave-cluster
LOGS=/var/log/imgsave-cluster
NODES=(n1 n2)
BASE_IMAGE=localhost/imgsave-base:latest
REGISTRY_ADDR=127.0.0.1:5000
PACKAGES=(slurm-wlm slurmdbd munge mariadb-server podman runc docker-registry siftool
          squashfs-tools busybox-static zstd pigz apache2-utils procps iproute2 util-linux
          python3-venv curl chromium sudo)
# imgsave as every user runs it: a root-owned venv on Debian's python (not under /root)
RUNTIME=/opt/imgsave
SERVICE_ACCOUNT=imgsave
ENTRY=/usr/local/sbin/imgsave-node-save
NODE_CONFIG=/etc/imgsave/site.toml

running() { pgrep -x "$1" >/dev/null 2>&1; }

install_users() {
    local u
    for u in alice bob dana; do  # dana: the portal browser test's own user
        id "$u" >/dev/null 2>&1 || useradd --create-home --shell /bin/bash "$u"
    done
    # the portal's service account (imgsave serve, its tokens database); never root
    id "$SERVICE_ACCOUNT" >/dev/null 2>&1 ||
        useradd --system --home-dir /var/lib/imgsave --create-home --shell /usr/sbin/nologin \
            "$SERVICE_ACCOUNT"
    mkdir -p /var/lib/imgsave
    chown -R "$SERVICE_ACCOUNT:" /var/lib/imgsave
    chmod 0700 /var/lib/imgsave
}

source_stamp() {  # a hash of everything the runtime is built from
    (cd "$HERE/.." && find api builder_jobs core registry scheduler_glue site_configs pyproject.toml \
        -type f ! -name '*.pyc' -print0 | sort -z | xargs -0 sha256sum) | sha256sum | cut -c1-64
}

install_runtime() {  # /opt/imgsave/venv: what users, the service and the node entry run
    local stamp want
    if [ ! -x "$RUNTIME/venv/bin/python" ]; then
        say "creating $RUNTIME/venv on /usr/bin/python3"
        mkdir -p "$RUNTIME"
        /usr/bin/python3 -m venv "$RUNTIME/venv"
        "$RUNTIME/venv/bin/pip" install -q --upgrade pip >"$LOGS/runtime-install.log" 2>&1 ||
            { cat "$LOGS/runtime-install.log" >&2; return 1; }
    fi
    want=$(source_stamp)
    stamp="$RUNTIME/venv/.imgsave-source"
    if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
        say "installing imgsave into $RUNTIME/venv"
        local build
        build=$(mktemp -d)
        (cd "$HERE/.." && tar -c --exclude=__pycache__ api builder_jobs core registry \
            scheduler_glue site_configs pyproject.toml README.md) | tar -x -C "$build"
        if ! { "$RUNTIME/venv/bin/pip" install -q "$build" &&
               "$RUNTIME/venv/bin/pip" install -q --no-deps --force-reinstall "$build"; } \
               >"$LOGS/runtime-install.log" 2>&1; then
            cat "$LOGS/runtime-install.log" >&2
            return 1
        fi
        rm -rf "$build"
        echo "$want" >"$stamp"
    fi
    chown -R root:root "$RUNTIME"
    chmod -R go-w "$RUNTIME"
    ln -sf "$RUNTIME/venv/bin/imgsave" /usr/local/bin/imgsave
}

install_entry() {  # the node's one privileged entry and its sudoers rule
    mkdir -p /etc/imgsave
    install -m 0644 "$HERE/../site_configs/local.toml" "$NODE_CONFIG"
    sed -e "s|@PYTHON@|$RUNTIME/venv/bin/python|" -e "s|@CONFIG@|$NODE_CONFIG|" \
        "$HERE/../site_configs/deploy/imgsave-node-save.in" >"$ENTRY.new"
    chown root:root "$ENTRY.new" && chmod 0755 "$ENTRY.new" && mv "$ENTRY.new" "$ENTRY"
    install -m 0440 "$HERE/../site_configs/deploy/sudoers-imgsave" /etc/sudoers.d/imgsave.new
    visudo -cqf /etc/sudoers.d/imgsave.new
    mv /etc/sudoers.d/imgsave.new /etc/sudoers.d/imgsave
    mkdir -p /var/lib/imgsave-node && chmod 0700 /var/lib/imgsave-node
    # the epilog that resumes a container whose save was killed outright (slurm.conf)
    sed -e "s|@PYTHON@|$RUNTIME/venv/bin/python|" -e "s|@STATE_DIR@|/var/lib/imgsave-node|g" \
        -e "s|@CONFIG@|$NODE_CONFIG|" \
        "$HERE/../site_configs/deploy/imgsave-epilog.in" >/usr/local/sbin/imgsave-epilog.new
    chown root:root /usr/local/sbin/imgsave-epilog.new
    chmod 0755 /usr/local/sbin/imgsave-epilog.new
    mv /usr/local/sbin/imgsave-epilog.new /usr/local/sbin/imgsave-epilog
    # the local cluster's session locator for the portal's service account (read-only)
    install -o root -g root -m 0755 "$TEMPLATES/imgsave-local-sessions" \
        /usr/local/sbin/imgsave-local-sessions
    install -m 0440 "$TEMPLATES/sudoers-imgsave-local" /etc/sudoers.d/imgsave-local.new
    visudo -cqf /etc/sudoers.d/imgsave-local.new
    mv /etc/sudoers.d/imgsave-local.new /etc/sudoers.d/imgsave-local
}

install_configs() {
    mkdir -p "$STATE"/{slurmctld,registry,mysql-run} "$RUN" "$LOGS" /etc/slurm /etc/containers
    # no shared world-writable spool: each account has its own (site config spool_dir)
    if [ -d /var/spool/imgsave ]; then chmod 0755 /var/spool/imgsave; fi
    local n
    for n in "${NODES[@]}"; do
        mkdir -p "$STATE/nodes/$n"/{containers,run-containers,run-libpod,spool}
    done
    local cpus mem
    cpus=$(nproc)
    mem=$(($(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 / 2))
    sed -e "s|@HOST@|$(hostname)|g" -e "s|@STATE@|$STATE|g" -e "s|@RUN@|$RUN|g" \
        -e "s|@LOGS@|$LOGS|g" -e "s|@CPUS@|$cpus|g" -e "s|@USERCPUS@|$((cpus > 1 ? cpus - 1 : 1))|g" \
        -e "s|@MEM@|$mem|g" "$TEMPLATES/slurm.conf.in" >/etc/slurm/slurm.conf.new
    if ! cmp -s /etc/slurm/slurm.conf.new /etc/slurm/slurm.conf; then
        SLURM_CONF_CHANGED=1  # running daemons re-read it (cmd_up)
    fi
    mv /etc/slurm/slurm.conf.new /etc/slurm/slurm.conf
    sed -e "s|@RUN@|$RUN|g" -e "s|@LOGS@|$LOGS|g" "$TEMPLATES/slurmdbd.conf.in" >/etc/slurm/slurmdbd.conf
    chmod 600 /etc/slurm/slurmdbd.conf
    install -m 644 "$TEMPLATES/containers.conf" /etc/containers/containers.conf
    sed -e "s|@STATE@|$STATE|g" -e "s|@ADDR@|$REGISTRY_ADDR|g" \
        "$TEMPLATES/registry.yml.in" >"$STATE/registry.yml"
}

start_munge() {
    [ -s /etc/munge/munge.key ] || mungekey -c -k /etc/munge/munge.key
    chown munge:munge /etc/munge/munge.key && chmod 400 /etc/munge/munge.key
    mkdir -p /run/munge && chown munge:munge /run/munge
    if ! running munged; then
        say "starting munged"
        runuser -u munge -- munged
    fi
    wait_for 10 munge munge -n
}

start_mariadb() {
    mkdir -p /run/mysqld && chown mysql:mysql /run/mysqld
    if ! running mariadbd; then
        say "starting mariadbd"
        [ -d /var/lib/mysql/mysql ] || mariadb-install-db --user=mysql >/dev/null
        setsid -f mariadbd --user=mysql --bind-address=127.0.0.1 \
            --innodb-buffer-pool-size=128M >"$LOGS/mariadb.log" 2>&1
    fi
    wait_for 30 mariadb mariadb -e 'select 1'
    mariadb -e "CREATE DATABASE IF NOT EXISTS slurm_acct_db;
                CREATE USER IF NOT EXISTS 'slurm'@'localhost';
                GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';"
}

start_slurmdbd() {
    if ! running slurmdbd; then
        say "starting slurmdbd"
        slurmdbd
    fi
    wait_for 30 slurmdbd sacctmgr -n list cluster
    if ! sacctmgr -n -P list cluster format=cluster | grep -qx imgsave-local; then
        sacctmgr -i add cluster imgsave-local >/dev/null
    fi
    local u
    sacctmgr -n -P list account imgsave | grep -q imgsave ||
        sacctmgr -i add account imgsave Description=imgsave Organization=local >/dev/null
    for u in root alice bob dana "$SERVICE_ACCOUNT"; do
        sacctmgr -n -P list user "$u" | grep -q . ||
            sacctmgr -i add user "$u" Account=imgsave >/dev/null
    done
}

start_slurmctld() {
    if ! running slurmctld; then
        say "starting slurmctld"
        slurmctld
    fi
    wait_for 30 slurmctld scontrol ping
}

node_pid() { cat "$RUN/slurmd-$1.pid" 2>/dev/null; }

node_running() {
    local pid
    pid=$(node_pid "$1") && [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null
}

start_node() {
    local n=$1 d="$STATE/nodes/$1"
    if node_running "$n"; then return 0; fi
    say "starting slurmd $n (own mount namespace, node-local container storage)"
    # Each node sees its own /var/lib/containers, /run/containers and /run/libpod, so a
    # container started "on n1" really is invisible to a job on n2.
    unshare -m --propagation private -- /bin/bash -c '
        set -e
        mkdir -p /var/lib/containers /run/containers /run/libpod
        mount --bind "$1/containers" /var/lib/containers
        mount --bind "$1/run-containers" /run/containers
        mount --bind "$1/run-libpod" /run/libpod
        exec slurmd -N "$2"' node-ns "$d" "$n"
    wait_for 20 "slurmd $n" node_running "$n"
}

node_exec() {  # node_exec NODE CMD...
    local n=$1; shift
    local pid
    pid=$(node_pid "$n") || { say "node $n is not running"; return 1; }
    nsenter -t "$pid" -m -- "$@"
}

build_base_image() {  # the offline base image: busybox-static rootfs -> podman import
    local n=$1
    if node_exec "$n" podman image exists "$BASE_IMAGE"; then return 0; fi
    say "importing $BASE_IMAGE on $n"
    local root
    root=$(mktemp -d)
    mkdir -p "$root"/{bin,etc,root,tmp,opt,home/jovyan}
    cp /bin/busybox "$root/bin/busybox"
    local app
    for app in sh ls cat echo sleep mkdir rm cp mv dd head tail wc ln chmod chown id \
               touch find grep sed tar gzip env true false sync stat du df sha256sum; do
        ln -sf busybox "$root/bin/$app"
    done
    printf 'root:x:0:0:root:/root:/bin/sh\njovyan:x:1000:100::/home/jovyan:/bin/sh\n' >"$root/etc/passwd"
    printf 'root:x:0:\nusers:x:100:\n' >"$root/etc/group"
    printf 'imgsave base image (busybox)\n' >"$root/etc/imgsave-base"
    tar --numeric-owner -C "$root" -c . | node_exec "$n" podman import \
        --change 'CMD ["/bin/sh"]' --change 'ENV PATH=/bin' - "$BASE_IMAGE" >/dev/null
    rm -rf "$root"
}

start_nodes() {
    local n
    for n in "${NODES[@]}"; do start_node "$n"; done
    for n in "${NODES[@]}"; do build_base_image "$n"; done
    for n in "${NODES[@]}"; do
        scontrol update NodeName="$n" State=RESUME >/dev/null 2>&1 || true
    done
    wait_for 30 "nodes idle" nodes_idle
}

nodes_idle() {
    local states
    states=$(sinfo -h -N -p imgsave -o '%N %t' | awk '{print $2}' | sort -u)
    ! grep -qvE '^(idle|mix|alloc)$' <<<"$states"
}

start_registry() {
    if ! curl -fsS "http://$REGISTRY_ADDR/v2/" >/dev/null 2>&1; then
        say "starting registry on $REGISTRY_ADDR"
        setsid -f docker-registry serve "$STATE/registry.yml" >"$LOGS/registry.log" 2>&1
    fi
    wait_for 20 registry curl -fsS "http://$REGISTRY_ADDR/v2/"
}

session() {  # session NODE USER NAME [--engine containerd|docker|podman | podman run args...]
    local n=$1 user=$2 name=$3; shift 3
    if [ "${1:-}" = --engine ] && [ "${2:-podman}" != podman ]; then
        exec "$HERE/engines.sh" session "$n" "$user" "$name" "$2"  # scripts/engines.sh up first
    fi
    if [ "${1:-}" = --engine ]; then shift 2; fi
    node_exec "$n" podman run -d --name "$name" --label "imgsave.owner=$user" \
        --network none "$@" "$BASE_IMAGE" sleep infinity
}

SLURM_CONF_CHANGED=0

cmd_up() {
    # one at a time: parallel runs (two test sessions) must not install the runtime at once
    exec 9>/run/imgsave-cluster-up.lock
    flock 9
    install_packages "${PACKAGES[@]}"
    install_users
    install_configs
    install_runtime
    install_entry
    exec 9>&-  # release before starting daemons: none may inherit (and hold) the lock
    start_munge
    start_mariadb
    start_slurmdbd
    start_slurmctld
    start_nodes
    if [ "$SLURM_CONF_CHANGED" = 1 ]; then
        say "slurm.conf changed: scontrol reconfigure"
        scontrol reconfigure
    fi
    start_registry
    say "up: $(sinfo -h -o '%P %D %t' | tr '\n' ' ')"
}

cmd_down() {
    local n pid
    for n in "${NODES[@]}"; do
        if node_running "$n"; then
            node_exec "$n" podman rm -af -t 0 >/dev/null 2>&1 || true
            pid=$(node_pid "$n"); kill "$pid" 2>/dev/null || true
        fi
    done
    pkill -x slurmctld || true
    pkill -x slurmdbd || true
    pkill -f "docker-registry serve $STATE/registry.yml" || true
    pkill -x mariadbd || true
    pkill -x munged || true
    # `up` right after `down` must not find a daemon that is still shutting down.
    local p
    for p in slurmctld slurmdbd mariadbd munged; do
        wait_for 30 "$p to stop" not_running "$p" || true
    done
    wait_for 30 "the registry to stop" not_running_registry || true
    say "down"
}

not_running() { ! running "$1"; }
not_running_registry() { ! curl -fsS "http://$REGISTRY_ADDR/v2/" >/dev/null 2>&1; }

cmd_status() {
    local p n
    for p in munged mariadbd slurmdbd slurmctld; do
        if running "$p"; then echo "$p: running"; else echo "$p: stopped"; fi
    done
    for n in "${NODES[@]}"; do
        if node_running "$n"; then echo "slurmd $n: running (pid $(node_pid "$n"))"; else echo "slurmd $n: stopped"; fi
    done
    if curl -fsS "http://$REGISTRY_ADDR/v2/" >/dev/null 2>&1; then
        echo "registry $REGISTRY_ADDR: running"
    else
        echo "registry $REGISTRY_ADDR: stopped"
    fi
    sinfo 2>/dev/null || true
}

case "${1:-}" in
    install) install_packages "${PACKAGES[@]}"; install_users; install_configs; install_runtime; install_entry ;;
    up) cmd_up ;;
    down) cmd_down ;;
    status) cmd_status ;;
    node-exec) shift; node_exec "$@" ;;
    session) shift; session "$@" ;;
    *) sed -n '2,15p' "$0"; exit 2 ;;
esac
