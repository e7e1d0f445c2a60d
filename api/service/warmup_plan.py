"""Warm-up plans: which images go to which nodes. Pure functions, no I/O.

Three ways to say it, one result (node -> images, in the order given):

- ``IMAGE... --nodes n[1-4]``: the same images on every node of a Slurm hostlist;
- ``--job J``: the same images on the nodes of job J (the service asks the scheduler);
- a plan file, different images per node::

      [[warmup]]
      nodes = "n[1-2]"
      images = ["alice/torch-env:v1"]

      [[warmup]]
      nodes = "n3,n4"
      images = ["alice/jax-env:v2", "alice/data:v1"]

  A node named by several entries gets all their images, each once.

Hostlists are expanded with python-hostlist (Slurm's own syntax, for PBS sites too).
"""

from __future__ import annotations

import tomllib
from collections.abc import Iterable, Mapping, Sequence

import hostlist

from core.errors import InvalidRequest

MAX_NODES = 1024  # one warm-up submits one job per node


def expand_nodes(expression: str) -> list[str]:
    """``n[1-2],gpu01`` -> ``["n1", "n2", "gpu01"]``, without repeats; InvalidRequest if
    malformed, empty or larger than :data:`MAX_NODES`."""
    text = expression.strip()
    if not text:
        raise InvalidRequest("name at least one node (e.g. --nodes 'n[1-4]')")
    try:
        nodes = list(dict.fromkeys(hostlist.expand_hostlist(text)))
    except hostlist.BadHostlist as e:
        raise InvalidRequest(f"bad node list {expression!r}: {e}") from e
    if len(nodes) > MAX_NODES:
        raise InvalidRequest(f"{len(nodes)} nodes; a warm-up takes at most {MAX_NODES}")
    bad = [n for n in nodes if n.startswith("-") or not n.isprintable() or " " in n]
    if bad:
        raise InvalidRequest(f"bad node names in {expression!r}: {', '.join(bad)}")
    return nodes


def same_images(nodes: Iterable[str], images: Sequence[str]) -> dict[str, list[str]]:
    """Every node gets ``images``."""
    if not images:
        raise InvalidRequest("name at least one image to warm up")
    return {node: list(dict.fromkeys(images)) for node in nodes}


def parse_plan(text: str) -> dict[str, list[str]]:
    """A plan file's node -> images (see the module's doc); InvalidRequest if wrong."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise InvalidRequest(f"the plan is not valid TOML: {e}") from e
    entries = data.get("warmup")
    extra = sorted(set(data) - {"warmup"})
    if extra:
        raise InvalidRequest(f"unknown keys in the plan: {', '.join(extra)}; "
                             "write [[warmup]] tables with nodes and images")  # fmt: skip
    if not isinstance(entries, list) or not entries:
        raise InvalidRequest("the plan has no [[warmup]] tables (nodes = ..., images = [...])")
    plan: dict[str, list[str]] = {}
    for number, entry in enumerate(entries, 1):
        nodes, images = _entry(entry, number)
        for node in expand_nodes(nodes):
            have = plan.setdefault(node, [])
            have.extend(i for i in images if i not in have)
    if len(plan) > MAX_NODES:
        raise InvalidRequest(f"{len(plan)} nodes; a warm-up takes at most {MAX_NODES}")
    return plan


def _entry(entry: object, number: int) -> tuple[str, list[str]]:
    where = f"[[warmup]] number {number}"
    if not isinstance(entry, Mapping):
        raise InvalidRequest(f"{where} is not a table")
    extra = sorted(set(entry) - {"nodes", "images"})
    if extra:
        raise InvalidRequest(f"{where}: unknown keys {', '.join(extra)}")
    nodes, images = entry.get("nodes"), entry.get("images")
    if not isinstance(nodes, str) or not nodes.strip():
        raise InvalidRequest(f"{where}: nodes must be a hostlist string such as \"n[1-2]\"")
    if (not isinstance(images, list) or not images
            or not all(isinstance(i, str) and i for i in images)):
        raise InvalidRequest(f"{where}: images must be a non-empty list of image names")
    return nodes, list(images)
