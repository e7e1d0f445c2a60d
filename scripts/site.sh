#!/usr/bin/env bash
# The portal as a centre runs it, on the local cluster: nginx terminating TLS (a locally
# made CA) and signing users on (auth_basic standing in for the site's SSO), two
# `imgsave serve` processes behind it on unix sockets, sharing one PostgreSQL.
#
#   scripts/site.sh up       install (apt: nginx, postgresql), then start what is not running
#   scripts/site.sh down     stop the two servers and nginx (PostgreSQL keeps running)
#   scripts/site.sh status   what runs
#   scripts/site.sh restart-server N    stop and start server N (1 or 2)
#
# Needs scripts/cluster.sh up first (users, the runtime in /opt/imgsave, Slurm).
# https://127.0.0.1:8443/ ; the CA is /etc/imgsave-site/ca.crt ; users' passwords (made
# here, for the tests and the demo) are /etc/imgsave-site/passwords/USER (root's, 0600).
# See docs/install-portal.md.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
SAY_AS=site
# shellcheck source=scripts/lib.sh
source "$HERE/lib.sh"
close_inherited_descriptors
TOP="$HERE/.."
ETC=/etc/imgsave-site
SOCKETS=/run/imgsave-portal
LOGS=/var/log/imgsave-cluster
INSTANCE=/var/lib/imgsave/portal-instance
LISTEN=127.0.0.1:8443
SERVICE_ACCOUNT=imgsave
PROXY_GROUP=www-data
IMGSAVE=/opt/imgsave/venv/bin/imgsave
DATABASE=imgsave
DATABASE_URL="postgresql+psycopg://$SERVICE_ACCOUNT@/$DATABASE?host=/var/run/postgresql"
USERS=(alice bob dana ops)  # ops: the sign-on's imgsave admin (not a Unix account)
PACKAGES=(nginx postgresql openssl apache2-utils)

make_ca() {  # a CA of our own and the proxy's certificate for 127.0.0.1 and localhost
    mkdir -p "$ETC/passwords"
    chmod 0755 "$ETC"
    chmod 0700 "$ETC/passwords"
    if [ ! -s "$ETC/ca.crt" ]; then
        say "making a local CA and the proxy's certificate"
        (umask 077
         openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=imgsave local CA" \
             -keyout "$ETC/ca.key" -out "$ETC/ca.crt" 2>/dev/null
         openssl req -newkey rsa:2048 -nodes -subj "/CN=localhost" \
             -keyout "$ETC/proxy.key" -out "$ETC/proxy.csr" 2>/dev/null
         printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\n' >"$ETC/proxy.ext"
         openssl x509 -req -in "$ETC/proxy.csr" -CA "$ETC/ca.crt" -CAkey "$ETC/ca.key" \
             -CAcreateserial -days 825 -extfile "$ETC/proxy.ext" -out "$ETC/proxy.crt" 2>/dev/null)
        chmod 0644 "$ETC/ca.crt" "$ETC/proxy.crt"
    fi
}

make_users() {  # the sign-on's users: a random password each, never on a command line
    local u file
    touch "$ETC/htpasswd"
    for u in "${USERS[@]}"; do
        file="$ETC/passwords/$u"
        if [ ! -s "$file" ]; then
            (umask 077; openssl rand -hex 16 >"$file")
        fi
        if ! htpasswd -vi "$ETC/htpasswd" "$u" <"$file" >/dev/null 2>&1; then
            htpasswd -iB "$ETC/htpasswd" "$u" <"$file" 2>/dev/null
        fi
    done
    chown root:"$PROXY_GROUP" "$ETC/htpasswd"
    chmod 0640 "$ETC/htpasswd"
}

start_postgres() {
    local version
    version=$(pg_lsclusters -h | awk 'NR==1 {print $1}')
    if [ -z "$version" ]; then
        version=$(ls /usr/lib/postgresql | sort -V | tail -1)
        pg_createcluster "$version" main >/dev/null
    fi
    if ! pg_lsclusters -h | awk '{print $4}' | grep -qx online; then
        say "starting PostgreSQL $version"
        pg_ctlcluster "$version" main start
    fi
    wait_for 30 PostgreSQL runuser -u postgres -- psql -qAtc "SELECT 1"
    # the service account by peer authentication over the local socket: no password
    if [ "$(runuser -u postgres -- psql -qAtc \
            "SELECT 1 FROM pg_roles WHERE rolname = '$SERVICE_ACCOUNT'")" != 1 ]; then
        runuser -u postgres -- createuser "$SERVICE_ACCOUNT"
    fi
    if [ "$(runuser -u postgres -- psql -qAtc \
            "SELECT 1 FROM pg_database WHERE datname = '$DATABASE'")" != 1 ]; then
        say "creating database $DATABASE owned by $SERVICE_ACCOUNT"
        runuser -u postgres -- createdb -O "$SERVICE_ACCOUNT" "$DATABASE"
    fi
}

write_config() {  # the portal's site config: the local cluster's, with the site's API parts
    python3 - "$TOP/site_configs/local.toml" "$ETC/portal.toml.new" "$DATABASE_URL" <<'PY'
import sys
source, target, url = sys.argv[1:]
lines = []
for line in open(source).read().splitlines():
    if line.startswith("database_url"):
        line = f'database_url = "{url}"'
    lines.append(line)
    if line == "[api]":
        lines += ['trusted_proxies = ["unix"]', "secure_cookies = true", 'admins = ["ops"]']
assert "[api]" in lines, "local.toml has no [api] section"
open(target, "w").write("\n".join(lines) + "\n")
PY
    chmod 0644 "$ETC/portal.toml.new"
    mv "$ETC/portal.toml.new" "$ETC/portal.toml"
}

server_pid() { cat "$SOCKETS/api-$1.pid" 2>/dev/null || true; }

# what a server runs: the installed runtime and the portal's config (a change restarts it)
build_stamp() { cat /opt/imgsave/venv/.imgsave-source "$ETC/portal.toml" 2>/dev/null | sha256sum | cut -c1-16; }

server_running() {
    local pid
    pid=$(server_pid "$1")
    [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null
}

start_server() {  # start_server N: imgsave serve on $SOCKETS/api-N.sock as the service account
    local n=$1
    if server_running "$n"; then
        if [ "$(cat "$SOCKETS/api-$n.stamp" 2>/dev/null)" = "$(build_stamp)" ]; then return 0; fi
        say "imgsave or the portal's config changed: restarting server $n"
        stop_server "$n"
    fi
    rm -f "$SOCKETS/api-$n.sock"
    say "starting imgsave serve $n on $SOCKETS/api-$n.sock"
    # the two share the instance dir: one cookie-signing key for both
    # setpriv execs (runuser would stay as the parent): the pid file names the server
    setsid setpriv --reuid="$SERVICE_ACCOUNT" --regid="$SERVICE_ACCOUNT" --init-groups \
        env -i PATH=/usr/local/bin:/usr/bin:/bin \
        LANG=C.UTF-8 HOME=/var/lib/imgsave IMGSAVE_INSTANCE_DIR="$INSTANCE" \
        "$IMGSAVE" --config "$ETC/portal.toml" serve --unix-socket "$SOCKETS/api-$n.sock" \
        --threads 8 >>"$LOGS/serve-$n.log" 2>&1 </dev/null &
    echo $! >"$SOCKETS/api-$n.pid"
    build_stamp >"$SOCKETS/api-$n.stamp"
    wait_for 30 "imgsave serve $n" curl -sf --unix-socket "$SOCKETS/api-$n.sock" \
        http://localhost/healthz || { tail -20 "$LOGS/serve-$n.log" >&2; return 1; }
}

stop_server() {
    local pid
    pid=$(server_pid "$1")
    if [ -n "$pid" ]; then
        kill "$pid" 2>/dev/null || true
        wait_for 10 "server $1 to stop" bash -c "! kill -0 $pid" || kill -9 "$pid" 2>/dev/null || true
    fi
    rm -f "$SOCKETS/api-$1.pid" "$SOCKETS/api-$1.sock" "$SOCKETS/api-$1.stamp"
}

start_nginx() {
    sed -e "s|@SOCKETS@|$SOCKETS|g" -e "s|@LISTEN@|$LISTEN|g" -e "s|@SERVER_NAME@|localhost|g" \
        -e "s|@CERT@|$ETC/proxy.crt|g" -e "s|@KEY@|$ETC/proxy.key|g" \
        -e "s|@HTPASSWD@|$ETC/htpasswd|g" "$TOP/site_configs/deploy/nginx-imgsave.conf.in" \
        >"$ETC/imgsave-site.conf"
    cat >"$ETC/nginx.conf" <<EOF
# the local site's nginx: only the imgsave server (scripts/site.sh)
user $PROXY_GROUP;
worker_processes auto;
worker_rlimit_nofile 16384;
pid /run/imgsave-site-nginx.pid;
error_log $LOGS/nginx-error.log;
# each signed-on user holds a connection, and each request one more to a server
events { worker_connections 8192; }
http {
    access_log $LOGS/nginx-access.log;
    include /etc/nginx/mime.types;
    include $ETC/imgsave-site.conf;
}
EOF
    nginx -t -c "$ETC/nginx.conf" -q
    if [ -s /run/imgsave-site-nginx.pid ] && kill -0 "$(cat /run/imgsave-site-nginx.pid)" 2>/dev/null; then
        nginx -c "$ETC/nginx.conf" -s reload
    else
        say "starting nginx on https://$LISTEN/"
        nginx -c "$ETC/nginx.conf"
    fi
    wait_for 20 nginx curl -sf --cacert "$ETC/ca.crt" "https://$LISTEN/healthz"
}

cmd_up() {
    [ -x "$IMGSAVE" ] || { say "run scripts/cluster.sh up first"; exit 1; }
    install_packages "${PACKAGES[@]}"
    make_ca
    make_users
    start_postgres
    write_config
    # the sockets' directory: the service account's, the proxy's group may enter
    install -d -o "$SERVICE_ACCOUNT" -g "$PROXY_GROUP" -m 0750 "$SOCKETS"
    install -d -o "$SERVICE_ACCOUNT" -g "$SERVICE_ACCOUNT" -m 0700 "$INSTANCE"
    mkdir -p "$LOGS"
    start_server 1
    start_server 2
    start_nginx
    say "up: https://$LISTEN/ (CA $ETC/ca.crt)"
}

cmd_down() {
    if [ -s /run/imgsave-site-nginx.pid ]; then
        nginx -c "$ETC/nginx.conf" -s quit 2>/dev/null || true
    fi
    stop_server 1
    stop_server 2
}

cmd_status() {
    local n
    for n in 1 2; do
        if server_running "$n"; then echo "server $n: running (pid $(server_pid "$n"))"
        else echo "server $n: stopped"; fi
    done
    curl -s --cacert "$ETC/ca.crt" -o /dev/null -w "proxy: https://$LISTEN/healthz %{http_code}\n" \
        "https://$LISTEN/healthz" || echo "proxy: not answering"
}

case "${1:-}" in
    up) cmd_up ;;
    down) cmd_down ;;
    status) cmd_status ;;
    restart-server) stop_server "$2"; start_server "$2" ;;
    *) echo "usage: $0 up|down|status|restart-server N" >&2; exit 2 ;;
esac
