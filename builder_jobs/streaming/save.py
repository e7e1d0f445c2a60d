"""The node's choice of commit: the streaming commit where the storage allows it (see
:mod:`builder_jobs.streaming.commit`), the engine's commit + push otherwise.

``engine.commit_method`` in the site config: ``auto`` (default) falls back to the engine
and records why; ``streaming`` fails instead; ``engine`` never streams.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING

from builder_jobs.events import FailureKind, ProgressEvent
from builder_jobs.failures import SaveFailed, registry_failure
from builder_jobs.image_config import ConfigRule
from builder_jobs.oci_save import PushedImage, RegistryTarget
from builder_jobs.streaming.chain import ResaveChain
from builder_jobs.streaming.commit import ImageTooLarge, StreamResult, stream_commit
from builder_jobs.streaming.overlay_layer import StreamingUnavailable
from builder_jobs.streaming.save_index import RecordError, RecordStore
from core.errors import ImgsaveError, RegistryError
from site_configs.schema import CommitMethod

if TYPE_CHECKING:
    from builder_jobs.engines import ContainerInfo
    from builder_jobs.run import SaveRun

log = logging.getLogger(__name__)

STREAMING_METHOD = "streaming"
LIST_TIMEOUT_SECONDS = 60.0


def try_streaming(
    run: SaveRun, target: RegistryTarget, info: ContainerInfo,
    annotations: Mapping[str, str],
) -> tuple[PushedImage | None, str, StreamResult | None]:
    """Save by streaming the upper dir (on the container's earlier save where the node's
    record allows: :mod:`.chain`); ``(None, why, None)`` when the engine must do it."""
    method = run.site.engine.commit_method
    if method is CommitMethod.ENGINE:
        return None, "engine commit chosen by the site config", None
    chain = _chain(run)

    def forward(event: ProgressEvent) -> None:
        run.events.emit(event)

    target.began = True  # from here a failure rolls back whatever reached the tag
    try:
        # stream_commit emits its own stages (locating, committing = the paused read,
        # pushing), so the progress bar moves forward only.
        result = stream_commit(
                info.id, target.ref, target.client, run.engine,
                compression=run.site.engine.layer_compression.value,
                annotations=annotations, events=forward,
                authfile=run.site.registry.credentials_file,
                max_image_bytes=run.site.limits.max_image_bytes, runner=run.runner,
                container_config=info.config, config_rule=ConfigRule.from_site(run.site),
                chain=chain,
        )  # fmt: skip
    except StreamingUnavailable as e:
        target.began = False
        if method is CommitMethod.STREAMING:
            raise SaveFailed(FailureKind.ENGINE, e.message) from e
        return None, e.reason, None
    except ImageTooLarge as e:
        raise SaveFailed(FailureKind.SIZE_LIMIT, e.message) from e
    except RegistryError as e:
        raise registry_failure(e, str(target.ref)) from e
    except ImgsaveError as e:
        raise SaveFailed(FailureKind.ENGINE, e.message) from e
    target.pushed_digests.append(result.digest)
    for stage, seconds in result.seconds.items():
        run.seconds[f"stream_{stage}"] = round(seconds, 3)
    manifest = target.client.manifest(target.repository, result.digest)
    if manifest is None:
        raise SaveFailed(FailureKind.REGISTRY,
                         f"{target.ref}@{result.digest} vanished right after the push")
    if chain is not None:
        chain.prune(lambda: _container_ids(run))  # records of containers gone from the node
    return PushedImage(result.digest, manifest, result.dropped_env), "", result


def _chain(run: SaveRun) -> ResaveChain | None:
    """The save's chain policy; None (a plain streaming save) if the node has no name
    a record directory can be made of."""
    try:
        store = RecordStore(run.site.node.state_dir, run.node or "local")
    except RecordError as e:
        log.warning("no incremental re-save: %s", e)
        return None
    # the engine that holds the container (a node may run sessions under several)
    return ResaveChain(store, engine=run.engine.kind.value, user=run.spec.user,
                       max_layers=run.site.engine.max_layers, full=run.spec.full)


def _container_ids(run: SaveRun) -> list[str]:
    """Every container the engine has on this node (running or not), by full id."""
    argv = run.engine.list_containers()
    try:
        out = run.runner(argv, timeout=LIST_TIMEOUT_SECONDS).stdout
    except ImgsaveError as e:
        raise OSError(f"cannot list the containers: {e}") from e
    return out.split()
