#!/usr/bin/env bash
# The whole test suite, from a fresh Debian 12 machine as root: installs what it needs,
# starts the local cluster (munge, MariaDB, slurmdbd, slurmctld, slurmd n1/n2, registry)
# and the portal's site (nginx, PostgreSQL, two imgsave serve),
# then runs lint, type checks and every test. Idempotent: run it again at will.
#   scripts/test.sh [pytest args...]
set -euo pipefail
top=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$top"
scripts/cluster.sh up
scripts/site.sh up   # nginx (TLS, sign-on), two imgsave serve on PostgreSQL
scripts/venv.sh
echo "== ruff"; .venv/bin/ruff check .
echo "== mypy"; .venv/bin/mypy
echo "== pytest"; .venv/bin/pytest -q -p no:cacheprovider "$@"
