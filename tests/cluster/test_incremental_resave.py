"""Incremental re-save for real: podman (host storage, root overlay), a real registry.

A container is saved once (full: no record yet), changed in every way an upper dir can
change between two saves, and saved again: the re-save is the first image plus one layer
of what changed, and its image must give the same file tree as the running container and
as ``podman commit`` + push + pull of the same container at the same moment (the tree
helpers of ``test_stream_commit.py``). Then each reason to fall back to a full save is
provoked for real. The end-to-end path (``imgsave submit`` as alice on the Slurm cluster,
``--full``, status) is ``test_resave_as_a_user_is_incremental_and_full_on_request``.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from api.service.progress import SaveStatus
from builder_jobs.streaming.chain import ResaveChain
from builder_jobs.streaming.commit import StreamResult, stream_commit
from builder_jobs.streaming.save_index import RecordStore
from registry.oci import RegistryClient
from registry.refs import ImageRef
from scheduler_glue.base import JobState
from tests.cluster.test_stream_commit import (  # the streaming tests' tree helpers
    CHANGES,
    ENGINE,
    LONG_DIR,
    LONG_FILE,
    _container,
    _diff,
    _engine_save,
    _image_tree,
    _mounted,
    _pull,
    _tree,
    cleanup_images,
    stream_base,
)
from tests.support.builder_fixtures import needs_podman, podman
from tests.support.cluster_helpers import (
    imgsave_as,
    node_exec,
    require_cluster,
    session_container,
    site,
    submit_as,
    unique,
    wait_final,
)
from tests.support.registry_server import RunningRegistry

__all__ = ["cleanup_images", "stream_base"]  # fixtures, used by name

# Between the two saves: new, changed, deleted (in the upper dir and in the base),
# renamed, hard-linked, chmod-only, changed back to the same bytes, a directory deleted
# and re-created (one of the first save's, one of the base's), a directory become a file.
RESAVE_CHANGES = r"""
set -e
pkg=/home/jovyan/.local/lib/site-packages/pkg
echo "def f(): return 'new'" > $pkg/m3.py
echo extra >> /etc/motd
rm $pkg/m7.py /opt/gone/y
mv $pkg/m8.py $pkg/moved.py
mv /opt/renamed /opt/renamed-again
ln /opt/app/old.txt /opt/app/old-link
chmod 640 /opt/app/empty.txt
cp /opt/app/main.py /tmp/main && cat /tmp/main > /opt/app/main.py
rm -rf /opt/app/lib && mkdir /opt/app/lib && echo fresh > /opt/app/lib/fresh.so
rm -rf /opt/base/sub 2>/dev/null; mkdir -p /opt/base/sub && echo again > /opt/base/sub/c
rm -rf /opt/app/empty && echo now-a-file > /opt/app/empty
mkdir -p /opt/new/deep && echo deep > /opt/new/deep/file
rm /opt/app/fifo
"""


def _save(container: str, registry: RunningRegistry, repo: str, tag: str,
          chain: ResaveChain) -> StreamResult:
    target = ImageRef(registry.host, repo, tag)
    with RegistryClient(registry.url) as client:
        return stream_commit(container, target, client, ENGINE, chain=chain)


def _chain(state: Path, **kwargs: Any) -> ResaveChain:
    return ResaveChain(RecordStore(state), engine="podman", user="alice", **kwargs)


@pytest.mark.podman
@needs_podman
def test_a_resave_is_one_layer_on_the_first_and_has_the_same_tree_as_podman_commit(
    stream_base: str,
    builder_registry: RunningRegistry,
    cleanup_images: Callable[[str], str],
    tmp_path: Path,
) -> None:
    repo = f"alice/resave-{uuid.uuid4().hex[:8]}"
    second = cleanup_images(f"{builder_registry.host}/{repo}:2")
    engine = cleanup_images(f"{builder_registry.host}/{repo}:engine")
    chain = _chain(tmp_path / "state")
    with _container(stream_base) as container:
        podman("exec", container, "sh", "-c", CHANGES, "sh", LONG_DIR, LONG_FILE)
        first = _save(container, builder_registry, repo, "1", chain)
        podman("exec", container, "sh", "-c", RESAVE_CHANGES)
        os.setxattr(_mounted(container) / "opt/app/empty.txt", "user.tag", b"v2")
        running = _tree(_mounted(container))
        result = _save(container, builder_registry, repo, "2", chain)
        _engine_save(container, engine)
    _pull(second)
    _pull(engine)
    resaved_tree, engine_tree = _image_tree(second), _image_tree(engine)

    assert _diff(running, resaved_tree) == []
    assert _diff(engine_tree, resaved_tree) == []
    assert "opt/gone/y" not in resaved_tree and "opt/renamed-again/r" in resaved_tree
    assert sorted(k for k in resaved_tree if k.startswith("opt/app/lib")) == [
        "opt/app/lib", "opt/app/lib/fresh.so"]  # fmt: skip
    assert resaved_tree["opt/app/old-link"]["hardlinks"] == ["opt/app/old-link",
                                                             "opt/app/old.txt"]  # fmt: skip
    assert resaved_tree["opt/app/empty.txt"]["xattrs"] == {"user.tag": b"v2".hex()}
    assert (first.incremental, first.chain_layers) == (False, 1)
    assert first.full_reason == "no record of an earlier save of this container on this node"
    assert (result.incremental, result.chain_layers, result.full_reason) == (True, 2, "")
    assert result.deleted >= 4  # m7.py, m8.py, y's whiteout was already there, fifo, ...
    assert result.layer_size * 20 < first.layer_size  # not the 3 MB big.so again
    with RegistryClient(builder_registry.url) as client:
        one, two = client.manifest(repo, "1"), client.manifest(repo, "2")
    assert one is not None and two is not None
    assert two.layers[:-1] == one.layers  # the first image's layers, not sent again
    assert result.bytes_pushed == result.layer_size + two.config_size + two.manifest_size


@pytest.mark.podman
@needs_podman
def test_each_reason_for_a_full_save_is_said_and_the_chain_starts_again(
    stream_base: str,
    builder_registry: RunningRegistry,
    cleanup_images: Callable[[str], str],
    tmp_path: Path,
) -> None:
    repo = f"alice/fallback-{uuid.uuid4().hex[:8]}"
    state = tmp_path / "state"
    with _container(stream_base) as container:
        podman("exec", container, "sh", "-c", "echo one > /opt/one")
        _save(container, builder_registry, repo, "1", _chain(state))
        same = _save(container, builder_registry, repo, "2", _chain(state))
        assert (same.incremental, same.chain_layers, same.files) == (True, 2, 0)

        forced = _save(container, builder_registry, repo, "3", _chain(state, full=True))
        assert (forced.incremental, forced.chain_layers) == (False, 1)
        assert forced.full_reason == "a full save was asked for (--full)"

        capped = _save(container, builder_registry, repo, "4", _chain(state, max_layers=2))
        assert capped.incremental and capped.chain_layers == 2
        squashed = _save(container, builder_registry, repo, "5", _chain(state, max_layers=2))
        assert not squashed.incremental and "max_layers (2)" in squashed.full_reason
        with RegistryClient(builder_registry.url) as client:
            five = client.manifest(repo, "5")
            assert five is not None and len(five.layers) == 2  # base + one layer again
            client.delete_tag_or_digest(repo, squashed.digest)  # the user deletes it
        gone = _save(container, builder_registry, repo, "6", _chain(state))
        assert not gone.incremental and "gone or changed in the registry" in gone.full_reason

        podman("restart", "-t", "0", container, timeout=120)
        restarted = _save(container, builder_registry, repo, "7", _chain(state))
        assert "restarted or recreated" in restarted.full_reason
        record = json.loads((state / "saves/local" / f"{_id(container)}.json").read_bytes())
        assert record["manifest_digest"] == restarted.digest and record["chain"] == 1
        again = _save(container, builder_registry, repo, "8", _chain(state))
        assert again.incremental and again.chain_layers == 2

        other = ResaveChain(RecordStore(state), engine="docker", user="alice")
        assert "made with podman, not docker" in _save(
            container, builder_registry, repo, "9", other).full_reason


def _id(container: str) -> str:
    return podman("inspect", "-f", "{{.Id}}", container).stdout.strip()


# --- on the cluster, as the user -----------------------------------------------------------


def _saved(s: Any, job: str) -> SaveStatus:
    status = wait_final(s, job, "alice")
    assert status.state is JobState.COMPLETED, status.reason
    return status


@pytest.mark.cluster
def test_resave_as_a_user_is_incremental_and_full_on_request() -> None:
    require_cluster()
    s = site()
    repo = unique("alice/resave")
    with session_container("n1", "alice") as name:
        node_exec("n1", "podman", "exec", name, "sh", "-c",
                  "head -c 2000000 /dev/urandom > /opt/big.bin")  # fmt: skip
        first = _saved(s, submit_as("alice", name, f"{repo}:v1", node="n1"))
        node_exec("n1", "podman", "exec", name, "sh", "-c", "echo small > /opt/small.txt")
        second = _saved(s, submit_as("alice", name, f"{repo}:v2", node="n1"))
        full = _saved(s, submit_as("alice", name, f"{repo}:v3", "--full", node="n1"))
        shown = json.loads(imgsave_as("alice", "--json", "status", full.job_id).stdout)
        table = imgsave_as("alice", "status", second.job_id).stdout
    assert first.result is not None and second.result is not None and full.result is not None
    assert first.result.save_kind == "full" and first.result.chain_layers == 1
    assert second.result.save_kind.startswith("incremental (2 layers, 0.0 MB new)")
    assert 0 < second.result.bytes_pushed < 10_000 < first.result.bytes_pushed
    assert full.result.full_reason == "a full save was asked for (--full)"
    assert shown[0]["save_kind"] == "full" and shown[0]["incremental"] is False
    assert "incremental (2 layers" in table
    v2 = s.registry.manifest(repo, "v2")
    assert v2 is not None and len(v2.layers) == 3
