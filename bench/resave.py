"""Incremental re-save vs a full save of the same container, alternating (issue 16).

The pip case (what ``pip install numpy scipy sympy`` leaves: about 300 MB in 7,219
files, from the cache ``bench/stream_commit.py`` fills) is copied into a container on
host podman storage and saved once with the chain on (the record of that save is the
start of the chain). Then, each round, three changes in turn:

(a) one small file changed (a line appended to a module),
(b) 10 MB of new packages (a pip-install-like tree, ``stream_commit.populate``),
(c) nothing changed;

after each, the container is saved both ways, the order alternating round by round: the
incremental re-save (``stream_commit`` with the node's record, builds on the previous
incremental save) and a full save (``stream_commit`` without a chain: today's save). For
each: the node-side time (``stream_commit``'s own total, and the pause), the bytes
uploaded (new layer + config + manifest) and how much the registry's storage grew
(``du -sb``). "Changed, compressed" is measured on its own: ``tar`` of exactly the
changed paths through the same zstd level-1 codec. Medians over the rounds.

    .venv/bin/python bench/resave.py [--runs 5] [--pip "numpy scipy sympy"] [--update-docs]

Needs root, podman and docker-registry (the package cache must exist or be installable).
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
import uuid
from collections.abc import Callable
from pathlib import Path

TOP = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(TOP))

from bench.docs_table import replace_section  # noqa: E402
from bench.stream_commit import (  # noqa: E402
    BASE,
    ENGINE,
    SITE_PACKAGES,
    ULIMITS,
    base_image,
    fill_pip,
    own_cpu,
    pip_tree,
    podman,
    populate,
    settle,
)
from builder_jobs.streaming.chain import ResaveChain  # noqa: E402
from builder_jobs.streaming.codecs import codec_for  # noqa: E402
from builder_jobs.streaming.commit import StreamResult, stream_commit  # noqa: E402
from builder_jobs.streaming.save_index import RecordStore, index_bytes  # noqa: E402
from registry.oci import RegistryClient  # noqa: E402
from registry.refs import ImageRef  # noqa: E402
from tests.support.registry_server import RunningRegistry, running_registry  # noqa: E402

CASES = ("a: one small file changed", "b: 10 MB of new packages", "c: nothing changed")

DOC_INTRO = """\
`bench/resave.py` (issue 16, [incremental-save.md](incremental-save.md)): the pip case of
the streaming-commit benchmark (what `pip install numpy scipy sympy` leaves, copied into a
container on host podman storage) saved once, then changed and saved again, each round
both ways in alternating order: the incremental re-save (on the node's record of the
previous save) and a full streaming save of the same container at the same moment. A
private docker-registry on 127.0.0.1 on the same 2-core VM. "node s" is the streaming
commit's own total (inspect, pause, read, compress, upload, config and manifest), "pause"
how long the container was frozen, "pushed" the bytes uploaded (layer + config +
manifest), "registry growth" how much the registry's storage grew (`du -sb`), "changed,
compressed" the changed paths alone as a tar through the same zstd level 1. Medians."""


DOC_NOTES = """\
How to read it against the issue's targets. **Bytes:** each re-save pushed 0.95-1.00x
of (1.05 x the changed paths compressed + config + manifest): within the target. The new
layer holds the changed files plus the headers of the directories above them and the
whiteouts. **Registry growth:** the new layer, config and manifest, plus 40-60 KB of the
registry's own bookkeeping (link files and directories) that every push costs: the full
save of an unchanged container, whose layer is byte-identical and stored once, grows it
by the same 47 KB. **Node time of (a): 0.46 s, over the 0.3 s target.** Most of it is
the three podman commands every streaming save runs (container inspect, pause, unpause:
0.1-0.3 s each on this VM, measured alone), then the paused walk (an `lstat` of each of
the 7,966 paths, relative to open directory fds: about 0.1 CPU-s) and the round trips
for the earlier image (its manifest and config, a HEAD per layer), config and manifest.
Pausing through the cgroup freezer instead of `podman pause`/`unpause` would save most
of the podman part; it is not done (it would bypass the engine's own state). The VM was
shared with other projects' tests during these runs: the full saves took 2.0-2.7 s
here against 1.04 s measured on a quiet VM (streaming-commit section), so wall times
are inflated by up to about 2x; the CPU column is less affected."""


def _upper(container: str) -> str:
    return podman("container", "inspect", "-f", "{{.GraphDriver.Data.UpperDir}}", container)


def _du(path: Path) -> int:
    if not path.exists():  # the registry makes its storage on the first push
        return 0
    out = subprocess.run(["du", "-sb", str(path)], capture_output=True, text=True, check=True)
    return int(out.stdout.split()[0])


def _compressed(upper: str, paths: list[str]) -> int:
    """zstd -1 size of a tar of exactly ``paths`` (and what directories among them hold)."""
    if not paths:
        return 0
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for rel in paths:
            tar.add(os.path.join(upper, rel), arcname=rel)
    return sum(len(piece) for piece in codec_for("zstd", 1).compress([buffer.getvalue()]))


def _save(
    container: str, registry: RunningRegistry, repo: str, tag: str, chain: ResaveChain | None
) -> tuple[StreamResult, float, int]:
    """The save's result, its CPU seconds (this process and the podman calls) and how
    much the registry's storage grew."""
    before = _du(registry.storage)
    target = ImageRef(registry.host, repo, tag)
    with RegistryClient(registry.url) as client:
        cpu = own_cpu()
        result = stream_commit(container, target, client, ENGINE, chain=chain)
        cpu = own_cpu() - cpu
    return result, cpu, _du(registry.storage) - before


def _change(case: int, merged: Path, run: int) -> list[str]:
    """Make change ``case``; returns the changed paths relative to the upper dir."""
    if case == 0:
        rel = f"{SITE_PACKAGES}/sympy/__init__.py"
        with open(merged / rel, "a") as fh:
            fh.write(f"# re-save {run}\n")
        return [rel]
    if case == 1:
        rel = f"{SITE_PACKAGES}/newpkg{run}"
        populate(merged / rel, 10 << 20, seed=100 + run)
        return [rel]
    return []


def bench(packages: str, runs: int, registry: RunningRegistry, state: Path) -> dict[str, object]:
    name = f"imgsave-bench-{uuid.uuid4().hex[:8]}"
    podman("run", "-d", *ULIMITS, "--name", name, BASE, "sleep", "infinity")
    rows: dict[str, dict[str, list[float]]] = {c: {} for c in CASES}
    repo_inc, repo_full = f"bench/resave-inc-{name[-8:]}", f"bench/resave-full-{name[-8:]}"
    chain = ResaveChain(RecordStore(state), engine="podman", user="bench", max_layers=1000)
    try:
        merged = Path(podman("mount", name))
        files = fill_pip(packages)(merged)
        upper = _upper(name)
        first, _, _ = _save(name, registry, repo_inc, "0", chain)
        record = chain.store.load(podman("inspect", "-f", "{{.Id}}", name))
        record_mb = index_bytes(record.index) / 1e6 if record else 0.0
        print(f"first save: {first.layer_size / 1e6:.1f} MB layer, {first.files} files, "
              f"record {record_mb:.2f} MB", flush=True)  # fmt: skip
        tag = 0
        for run in range(1, runs + 1):
            for case, label in enumerate(CASES):
                changed = _change(case, merged, run)
                compressed = _compressed(upper, changed)
                ways: list[tuple[str, Callable[[str], tuple[StreamResult, float, int]]]] = [
                    ("incremental", lambda t: _save(name, registry, repo_inc, t, chain)),
                    ("full", lambda t: _save(name, registry, repo_full, t, None)),
                ]
                if run % 2 == 0:
                    ways.reverse()
                for way, save in ways:
                    tag += 1
                    settle()
                    result, cpu, growth = save(str(tag))
                    if way == "incremental":
                        assert result.incremental, result.full_reason
                    allowance = 1.05 * compressed + (result.bytes_pushed - result.layer_size)
                    measured = {"node_s": result.seconds["total"], "pause_s": result.pause_seconds,
                                "pushed": result.bytes_pushed, "layer": result.layer_size,
                                "growth": growth, "compressed": compressed,
                                "ratio": result.bytes_pushed / allowance,
                                "tar": result.tar_size, "cpu": cpu,
                                **{f"s_{k}": v for k, v in result.seconds.items()}}  # fmt: skip
                    for key, value in measured.items():
                        rows[label].setdefault(f"{way}.{key}", []).append(float(value))
                    print(f"run {run} {label} {way}: {result.seconds['total']:.3f} s "
                          f"({result.seconds}), pushed {result.bytes_pushed} B, changed "
                          f"{compressed} B compressed, registry +{growth} B", flush=True)
        tar_mb = first.tar_size / 1e6
    finally:
        subprocess.run([*ENGINE.base, "rm", "-f", "-t", "0", name], capture_output=True,
                       check=False)  # fmt: skip
    return {"rows": rows, "files": files, "tar_mb": tar_mb, "record_mb": record_mb}


def _median(values: list[float]) -> float:
    return statistics.median(values)


def table(measured: dict[str, object]) -> str:
    rows = measured["rows"]
    assert isinstance(rows, dict)
    lines = [
        "| change | save | node s | node CPU s | pause s | pushed | registry growth "
        "| changed, compressed | pushed / (1.05 x changed + config + manifest) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for label, r in rows.items():
        for way in ("incremental", "full"):
            pushed, compressed = _median(r[f"{way}.pushed"]), _median(r[f"{way}.compressed"])
            lines.append(
                f"| {label} | {way} | {_median(r[f'{way}.node_s']):.3f} | "
                f"{_median(r[f'{way}.cpu']):.3f} | "
                f"{_median(r[f'{way}.pause_s']):.3f} | {_bytes(pushed)} | "
                f"{_bytes(_median(r[f'{way}.growth']))} | {_bytes(compressed)} | "
                f"{_median(r[f'{way}.ratio']):.2f} |"
            )
    stages = ("inspect", "pause", "read", "stream", "manifest", "total")
    lines += ["", "Where the node's time of the incremental re-save goes (medians, seconds; "
              "\"read\" is the paused walk and read, inside \"stream\"):", "",
              "| change | " + " | ".join(stages) + " |", "|---|" + "---|" * len(stages)]
    for label, r in rows.items():
        cells = [f"{_median(r.get(f'incremental.s_{k}', [0.0])):.3f}" for k in stages]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _bytes(n: float) -> str:
    for unit, size in (("MB", 1e6), ("KB", 1e3)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n:.0f} B"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pip", default="numpy scipy sympy")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--update-docs", action="store_true")
    args = parser.parse_args()
    base_image()
    pip_tree(args.pip)
    with tempfile.TemporaryDirectory(prefix="imgsave-bench-") as tmp:
        state = Path(tmp) / "state"
        with running_registry(Path(tmp) / "registry") as registry:
            measured = bench(args.pip, args.runs, registry, state)
    result = table(measured)
    print(result)
    if args.update_docs:
        command = (f".venv/bin/python bench/resave.py --pip '{args.pip}' --runs {args.runs} "
                   "--update-docs")  # fmt: skip
        case = (f"The diff: {measured['tar_mb']:.0f} MB of tar in {measured['files']} files; "
                f"the node's record of a save of it: {measured['record_mb']:.2f} MB.")
        body = f"{DOC_INTRO}\n\n    {command}\n\n{case}\n\n{result}\n\n{DOC_NOTES}"
        replace_section(TOP / "docs" / "benchmarks.md", "Incremental re-save", body)


if __name__ == "__main__":
    main()
