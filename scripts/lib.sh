# What scripts/cluster.sh, engines.sh and site.sh share (sourced, not run). Each sets
# SAY_AS (how its messages are prefixed) before sourcing, then calls
# close_inherited_descriptors before starting any daemon.

say() { printf '[%s] %s\n' "$SAY_AS" "$*" >&2; }

# Whoever runs a script may hold a lock (flock LOCK scripts/...): no daemon it starts may
# inherit it and hold it forever. Closes every inherited descriptor but 0-2 (and bash's
# 255, the script itself).
close_inherited_descriptors() {
    local fd
    for fd in /proc/$$/fd/*; do
        fd=${fd##*/}
        if ((fd > 2 && fd != 255)); then eval "exec $fd>&-"; fi
    done
}

wait_for() {  # wait_for SECONDS DESCRIPTION CMD...
    local limit=$1 what=$2; shift 2
    local i
    for ((i = 0; i < limit * 10; i++)); do
        if "$@" >/dev/null 2>&1; then return 0; fi
        sleep 0.1
    done
    say "timed out after ${limit}s waiting for $what"
    return 1
}

install_packages() {  # install_packages PACKAGE...: apt-get those not installed yet
    local missing=() p
    for p in "$@"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
    done
    if ((${#missing[@]})); then
        say "installing ${missing[*]}"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -q >/dev/null
        apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
    fi
}
