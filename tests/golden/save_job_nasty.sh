#!/bin/bash
# imgsave save job, request 0a1b2c3d.
# Rendered by builder_jobs.script; scheduler-neutral on purpose: the Slurm/PBS options
# (node, partition/queue, limits, name, comment) go on the sbatch/qsub argv.
# No secrets here: accounting may store this script (AccountingStoreFlags=job_script).
set -euo pipefail
umask 077
exec '/opt/my python/bin/python3 $(reboot)' -m builder_jobs.node_save '/spool/it'"'"'s a "dir" $(touch /tmp/imgsave-pwned) `id` ;&|*/spec.json'
