"""SIF save time: imgsave's SIF save through Slurm with zstd vs gzip squashfs, and vs a
bare `podman export | tar -x && mksquashfs` of the same container tree.

All three run on node n1 of the local cluster against the same container (a
pip-install-like diff), alternating, so machine noise hits them alike.

    .venv/bin/python bench/sif_compression.py [--runs 3] [--mb 200] [--update-docs]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

TOP = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(TOP))

from api.service.site import Site  # noqa: E402
from bench.as_users import site_config, submit_as  # noqa: E402
from bench.docs_table import replace_section  # noqa: E402
from bench.save_overhead import FILL_SCRIPT, NODE  # noqa: E402
from site_configs.schema import load_site_config  # noqa: E402
from tests.support.cluster_helpers import (  # noqa: E402
    node_exec,
    require_cluster,
    session_container,
    unique,
)

LOCAL = TOP / "site_configs" / "local.toml"


def config_with(compression: str) -> str:
    """The local site, SIF only to the user's directory (no ORAS), with ``compression``."""
    text = LOCAL.read_text()
    text = text.replace('compression = "zstd"', f'compression = "{compression}"')
    return text.replace("push_oras = true", "push_oras = false")


def imgsave_sif(text: str, container: str, tag: str) -> float:
    """alice saves a SIF; ``text`` is the site config of her CLI and of the node."""
    with site_config(text) as config:
        return _timed_sif(Site(load_site_config(config)), config, container, tag)


def _timed_sif(site: Site, config: Path, container: str, tag: str) -> float:
    start = time.perf_counter()
    job_id, _ = submit_as("alice", config, container, f"{unique('alice/bench-sif')}:{tag}",
                          NODE, formats="sif")
    while True:
        (status,) = site.saves.status([job_id], "alice")
        if status.finished:
            break
        time.sleep(0.1)
    elapsed = time.perf_counter() - start
    if status.reason or status.result is None:
        raise RuntimeError(f"SIF save failed: {status.reason}")
    Path(status.result.sif_path).unlink(missing_ok=True)
    return elapsed


def bare_mksquashfs(container: str) -> float:
    start = time.perf_counter()
    node_exec(NODE, "sh", "-c",
              'd=$(mktemp -d) && podman export "$1" | tar -x -C "$d" && '
              'mksquashfs "$d" "$d.sqfs" -comp zstd -noappend -quiet >/dev/null && '
              'rm -rf "$d" "$d.sqfs"', "sh", container)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--mb", type=int, default=200)
    parser.add_argument("--update-docs", action="store_true")
    args = parser.parse_args()
    require_cluster()
    with session_container(NODE, "alice") as container:
        zstd_site, gzip_site = config_with("zstd"), config_with("gzip")
        node_exec(NODE, "podman", "exec", container, "sh", "-c", FILL_SCRIPT, "sh",
                  str(args.mb))
        cases: list[tuple[str, Callable[[int], float]]] = [
            ("imgsave SIF save, squashfs zstd", lambda r: imgsave_sif(zstd_site, container,
                                                                      f"z{r}")),
            ("imgsave SIF save, squashfs gzip", lambda r: imgsave_sif(gzip_site, container,
                                                                      f"g{r}")),
            ("bare export + tar -x + mksquashfs zstd", lambda r: bare_mksquashfs(container)),
        ]
        times: dict[str, list[float]] = {name: [] for name, _ in cases}
        for run in range(1, args.runs + 1):
            order = cases if run % 2 else list(reversed(cases))
            for name, func in order:
                seconds = func(run)
                times[name].append(seconds)
                print(f"run {run} {name}: {seconds:.2f} s", flush=True)
    medians = {name: statistics.median(t) for name, t in times.items()}
    bare = medians["bare export + tar -x + mksquashfs zstd"]
    zstd = medians["imgsave SIF save, squashfs zstd"]
    lines = ["| what | median s | ratio to bare mksquashfs | runs |", "|---|---|---|---|"]
    for name, values in times.items():
        lines.append(f"| {name} | {medians[name]:.2f} | {medians[name] / bare:.2f}x | "
                     f"{', '.join(f'{v:.2f}' for v in values)} |")
    lines += ["", f"**gzip / zstd: {medians['imgsave SIF save, squashfs gzip'] / zstd:.2f}x; "
                  f"imgsave zstd / bare: {zstd / bare:.2f}x.**"]
    table = "\n".join(lines)
    print(table)
    if args.update_docs:
        command = (f".venv/bin/python bench/sif_compression.py --runs {args.runs} "
                   f"--mb {args.mb} --update-docs")
        replace_section(TOP / "docs" / "benchmarks.md", "SIF compression",
                        f"A ~{args.mb} MB diff on n1; {args.runs} alternating runs each. "
                        "The imgsave rows are alice's own `imgsave submit` (the CLI's "
                        "start-up included) through the scheduler hop, sudo into the "
                        "node's entry, export, squashfs, siftool and the copy into her "
                        f"directory by a process with her uid.\n\n    {command}\n\n"
                        f"{table}\n")


if __name__ == "__main__":
    main()
