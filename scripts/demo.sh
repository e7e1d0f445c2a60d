#!/usr/bin/env bash
# The main job end to end, on a fresh Debian 12 machine as root:
# bring up the local cluster, start alice's Jupyter-like session container on n1,
# "pip install" into it; then alice herself (not root: runuser) saves it through Slurm,
# follows its status, lists the pushed image and reads her usage report. The save job is
# hers in accounting; its root part is the node's one privileged entry
# (imgsave-node-save, through sudo; docs/security.md).
set -euo pipefail
top=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$top"
scripts/cluster.sh up
# imgsave as alice runs it: the root-owned runtime in /opt/imgsave (scripts/cluster.sh)
imgsave() { (cd / && runuser -u alice -- /opt/imgsave/venv/bin/imgsave "$@"); }
step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

step "alice's session container jupyter-alice on node n1"
scripts/cluster.sh node-exec n1 podman rm -f -t 0 jupyter-alice >/dev/null 2>&1 || true
scripts/cluster.sh session n1 alice jupyter-alice
# An afternoon of pip installs: ~40 MB of new files in the container.
scripts/cluster.sh node-exec n1 podman exec jupyter-alice sh -c '
    mkdir -p /opt/conda/lib/python3.11/site-packages/torch /home/jovyan/work &&
    dd if=/dev/urandom of=/opt/conda/lib/python3.11/site-packages/torch/libtorch_cpu.so bs=1M count=40 2>/dev/null &&
    echo "torch==2.13.0" > /opt/conda/requirements.txt &&
    echo "print(\"hello from the saved image\")" > /home/jovyan/work/notebook.py'

step "alice: imgsave submit jupyter-alice torch-env:v1 --node n1"
out=$(imgsave submit jupyter-alice torch-env:v1 --node n1)
echo "$out"
job=${out##* }

step "alice: imgsave status $job --wait"
imgsave status "$job" --wait

step "alice: imgsave queue (her save jobs, from Slurm accounting)"
imgsave queue
sacct -X -n -j "$job" -o JobID,User,JobName,State

step "alice: imgsave images (her images in the registry)"
imgsave images

step "the pushed image runs on n2 and holds alice's files"
scripts/cluster.sh node-exec n2 podman run --rm --network none --tls-verify=false \
    127.0.0.1:5000/alice/torch-env:v1 sh -c 'cat /opt/conda/requirements.txt; ls -l /opt/conda/lib/python3.11/site-packages/torch'

step "alice: imgsave report --by user,outcome (her image-build usage, from accounting)"
imgsave report --by user,outcome
