#!/usr/bin/env bash
# The main job end to end, on a fresh Debian 12 machine as root:
# bring up the local cluster, start alice's Jupyter-like session container on n1,
# "pip install" into it, save it through Slurm, follow its status, list the pushed
# image and show the usage report.
set -euo pipefail
top=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$top"
scripts/cluster.sh up
scripts/venv.sh
imgsave() { .venv/bin/imgsave "$@"; }
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

step "imgsave submit jupyter-alice alice/torch-env:v1 --node n1"
out=$(imgsave --user alice submit jupyter-alice alice/torch-env:v1 --node n1)
echo "$out"
job=${out##* }

step "imgsave status $job --wait"
imgsave --user alice status "$job" --wait

step "imgsave queue (alice's save jobs, from Slurm accounting)"
imgsave --user alice queue

step "imgsave images (alice's images in the registry)"
imgsave --user alice images

step "the pushed image runs on n2 and holds alice's files"
scripts/cluster.sh node-exec n2 podman run --rm --network none --tls-verify=false \
    127.0.0.1:5000/alice/torch-env:v1 sh -c 'cat /opt/conda/requirements.txt; ls -l /opt/conda/lib/python3.11/site-packages/torch'

step "imgsave report --by user,outcome (image-build usage from accounting)"
imgsave report --by user,outcome
