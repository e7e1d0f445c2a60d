#!/bin/bash
# imgsave save job, request 0a1b2c3d.
# Rendered by builder_jobs.script; scheduler-neutral on purpose: the Slurm/PBS options
# (node, partition/queue, limits, name, comment) go on the sbatch/qsub argv.
# No secrets here: accounting may store this script (AccountingStoreFlags=job_script).
set -euo pipefail
umask 077
# The job's id and node under imgsave's own names (the node side knows no scheduler).
export IMGSAVE_JOB_ID="${SLURM_JOB_ID:-}"
export IMGSAVE_NODE="${SLURMD_NODENAME:-}"
# Runs as the job's owner; the root part is the node's one privileged entry, which
# this asks for through sudo (builder_jobs/job_side.py, docs/security.md).
exec '/opt/my python/bin/python3 $(reboot)' -I -m builder_jobs.job_side '/spool/it'"'"'s a "dir" $(touch /tmp/imgsave-pwned) `id` ;&|*/spec.json'
