#!/usr/bin/env bash
# capture.sh NAME CMD...: run CMD (argv, no shell) against the live local cluster and
# keep NAME.txt (command, user, host, date, stdout, stderr, exit code), in the format of
# /work/shared/fixtures/pbs/; tests/support/replay.py:load_capture reads its stdout section.
set -uo pipefail
name=$1; shift
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
out=$(mktemp) err=$(mktemp)
"$@" >"$out" 2>"$err"
rc=$?
{
    printf '# command: %s\n' "$*"
    printf '# user: %s   host: %s   date: %s   slurm: %s\n' "$(id -un)" "$(hostname -s)" \
        "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$(sinfo --version 2>/dev/null)"
    echo '# ---- stdout ----'
    cat "$out"
    echo '# ---- stderr ----'
    cat "$err"
    printf '# ---- exit code: %s ----\n' "$rc"
} >"$here/$name.txt"
echo "$name: exit $rc, $(wc -l <"$out") stdout lines" >&2
rm -f "$out" "$err"
