"""What the image config rule costs the engine commit path: annotate alone vs annotate
with the config rewrite (fetch the engine's config, push the ruled one, delete the
engine's), against a private docker-registry on 127.0.0.1.

Each round pushes a fresh engine-like image (a config with the container's env, one
small layer) under a new tag for each variant, then times ``RegistryTarget.annotate``
on it, the two variants alternating which goes first. Also times the rule itself
(:func:`builder_jobs.image_config.saved_config` on the real podman capture). Medians,
spread (min-max) and the ratio of medians.

    .venv/bin/python bench/config_rule.py [--rounds 30] [--update-docs]

Needs docker-registry; a few seconds. ``--update-docs`` writes the table into
docs/saved-image.md.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

TOP = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(TOP))

from bench.docs_table import replace_section  # noqa: E402
from builder_jobs.engines import parse_container_inspect  # noqa: E402
from builder_jobs.image_config import ConfigRule, saved_config  # noqa: E402
from builder_jobs.oci_save import RegistryTarget  # noqa: E402
from registry.manifests import OCI_CONFIG, OCI_LAYER_GZIP, OCI_MANIFEST, sha256_digest  # noqa: E402
from registry.oci import RegistryClient  # noqa: E402
from registry.refs import ImageRef  # noqa: E402
from site_configs.schema import EngineKind  # noqa: E402
from tests.support.registry_server import running_registry  # noqa: E402

CAPTURE = TOP / "tests" / "captures" / "engines" / "podman_container_inspect_settings.json"
COMMAND = ".venv/bin/python bench/config_rule.py --rounds {rounds}"


def engine_push(client: RegistryClient, repo: str, tag: str) -> None:
    """What an engine's push leaves: its config (with the token) and one layer."""
    config = json.dumps({
        "architecture": "amd64", "os": "linux", "created": time.time(),
        "config": {"Env": ["PATH=/bin", f"FOO_TOKEN={uuid.uuid4().hex}"],
                   "Cmd": ["sleep", "infinity"], "Labels": {"imgsave.owner": "alice"}},
        "rootfs": {"type": "layers", "diff_ids": ["sha256:" + "1" * 64]},
    }).encode()  # fmt: skip
    layer = uuid.uuid4().bytes * 64
    client.push_blob(repo, config, sha256_digest(config))
    client.push_blob(repo, layer, sha256_digest(layer))
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "size": len(config), "digest": sha256_digest(config)},
        "layers": [{"mediaType": OCI_LAYER_GZIP, "size": len(layer),
                    "digest": sha256_digest(layer)}],
    }).encode()  # fmt: skip
    client.push_manifest(repo, tag, manifest, OCI_MANIFEST)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--update-docs", action="store_true")
    args = parser.parse_args()
    info = parse_container_inspect(CAPTURE.read_text(), EngineKind.PODMAN)
    rule = ConfigRule()
    notes = {"io.imgsave.owner": "alice"}
    times: dict[str, list[float]] = {"annotate": [], "annotate + config rule": []}
    with tempfile.TemporaryDirectory() as tmp, running_registry(Path(tmp) / "r") as registry, \
            RegistryClient(registry.url) as client:
        variants: dict[str, Callable[[RegistryTarget], object]] = {
            "annotate": lambda t: t.annotate(notes),
            "annotate + config rule": lambda t: t.annotate(
                notes, config=lambda c: saved_config(c, info.config, rule, ("PATH=/bin",))),
        }
        for n in range(args.rounds + 1):  # round 0 warms up and is not counted
            order = list(variants) if n % 2 else list(reversed(variants))
            for name in order:
                tag = f"t{n}-{len(name)}"
                target = RegistryTarget(client, ImageRef(registry.host, "alice/bench", tag))
                target.snapshot()
                engine_push(client, "alice/bench", tag)
                start = time.perf_counter()
                variants[name](target)
                if n:
                    times[name].append(time.perf_counter() - start)
    start = time.perf_counter()
    for _ in range(1000):
        saved_config({"config": {}}, info.config, rule, ("PATH=/bin",))
    rule_us = (time.perf_counter() - start) / 1000 * 1e6
    base = statistics.median(times["annotate"])
    rows = ["| step | median | min-max |", "|---|---|---|"]
    for name, values in times.items():
        rows.append(f"| {name} | {statistics.median(values) * 1000:.1f} ms | "
                    f"{min(values) * 1000:.1f}-{max(values) * 1000:.1f} ms |")
    ratio = statistics.median(times["annotate + config rule"]) / base
    table = "\n".join(rows)
    body = (f"`{COMMAND.format(rounds=args.rounds)}` ({args.rounds} rounds, alternating, "
            f"a private docker-registry on 127.0.0.1):\n\n{table}\n\n"
            f"The rewrite makes the engine path's registry step {ratio:.2f}x as long "
            f"(+{(statistics.median(times['annotate + config rule']) - base) * 1000:.1f} ms: "
            "a config GET, a blob upload, a blob DELETE). The rule itself takes "
            f"{rule_us:.0f} us. The streaming commit adds no request (it writes its "
            "config once either way). Not covered: the one `image inspect` of the base "
            "the engine path adds, and a remote registry's round trips; the machine was "
            "shared with other test runs (hence the spread).")
    print(body)
    if args.update_docs:
        replace_section(TOP / "docs" / "saved-image.md", "How much it costs", body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
