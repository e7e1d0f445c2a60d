"""Whether a streaming save may build on the container's earlier save, and its record.

:meth:`ResaveChain.plan` trusts the earlier save only when all of these hold, and
otherwise says why the save is a full one:

- the node has a record of it (:class:`~.save_index.RecordStore`, root's) for this
  container id, made by the same engine, for the same user, into the same registry;
- the container is the same life of it: same creation and start time, same upper dir
  (a restarted or recreated container is not trusted);
- the earlier image is still in the registry as it was pushed: its manifest, fetched by
  digest, has the recorded config and number of layers, and every layer is present in
  (or can be mounted into) the target repository;
- the chain stays within the site's ``engine.max_layers``: a save that would pass it
  is a full save again (one layer over the base image, "squashed");
- the user did not ask for a full save (``imgsave submit --full``).

:meth:`ResaveChain.record` writes the new head of the chain after the manifest is
pushed. A record that cannot be read or written never fails a save: the save is full,
and the reason is in its result.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from builder_jobs.streaming.base_image import BaseImage, _config, _place_layers
from builder_jobs.streaming.overlay_storage import OverlayContainer
from builder_jobs.streaming.save_index import (
    ContainerIdentity,
    RecordError,
    RecordStore,
    SaveRecord,
    UpperIndex,
)
from core.errors import InvalidRequest, NotFound
from registry.oci import RegistryClient
from registry.refs import ImageRef

log = logging.getLogger(__name__)

DEFAULT_MAX_LAYERS = 16


@dataclass(frozen=True)
class ChainPlan:
    """A full save (``earlier`` None, ``why_full`` says why) or one on ``earlier``."""

    earlier: SaveRecord | None = None
    base: BaseImage | None = None  # the earlier image, its layers in the target repository
    why_full: str = ""

    @property
    def incremental(self) -> bool:
        return self.earlier is not None and self.base is not None

    @property
    def chain(self) -> int:
        """Layers over the base image once this save is pushed."""
        return self.earlier.chain + 1 if self.incremental and self.earlier else 1


@dataclass(frozen=True)
class PushedHead:
    """What :meth:`ResaveChain.record` needs of the image just pushed."""

    manifest_digest: str
    config_digest: str
    layers: int
    image_size: int  # uncompressed: the earlier image's (or base's) plus the new tar


class ResaveChain:
    """The chain policy of one save: ``engine`` kind, ``user``, the site's limit."""

    def __init__(
        self,
        store: RecordStore,
        *,
        engine: str,
        user: str,
        max_layers: int = DEFAULT_MAX_LAYERS,
        full: bool = False,
    ) -> None:
        self.store = store
        self.engine = engine
        self.user = user
        self.max_layers = max_layers
        self.full = full

    def identity(self, info: OverlayContainer) -> ContainerIdentity:
        return ContainerIdentity(self.engine, info.id, info.created, info.started,
                                 info.upper_dir)  # fmt: skip

    def plan(self, info: OverlayContainer, client: RegistryClient, target: ImageRef) -> ChainPlan:
        """Build on the earlier save, or a full save and why (see the module doc)."""
        if self.full:
            return ChainPlan(why_full="a full save was asked for (--full)")
        try:
            record = self.store.load(info.id)
        except (RecordError, OSError) as e:
            return ChainPlan(why_full=f"the node's save record cannot be used: {e}")
        why = self._untrusted(record, info, target)
        if why:
            return ChainPlan(why_full=why)
        assert record is not None  # noqa: S101 - _untrusted said so
        base = earlier_image(client, target.repository, record)
        if base is None:
            return ChainPlan(why_full=(
                f"the earlier image {record.repository}@{record.manifest_digest} is gone "
                "or changed in the registry"))  # fmt: skip
        return ChainPlan(earlier=record, base=base)

    def _untrusted(
        self, record: SaveRecord | None, info: OverlayContainer, target: ImageRef
    ) -> str:
        if record is None:
            return "no record of an earlier save of this container on this node"
        if record.identity.engine != self.engine:
            return f"the earlier save was made with {record.identity.engine}, not {self.engine}"
        if not (info.created and info.started):
            return "the engine does not say when the container was created and started"
        if record.identity != self.identity(info):
            return "the container was restarted or recreated since the earlier save"
        if record.user != self.user:
            return "the earlier save was made for another user"
        if record.registry != target.registry:
            return f"the earlier save went to {record.registry}, not {target.registry}"
        if record.chain + 1 > self.max_layers:
            return (f"the chain has reached the site's max_layers ({self.max_layers}): "
                    "saved as one layer over the base image again")  # fmt: skip
        return ""

    def record(
        self, plan: ChainPlan, info: OverlayContainer, target: ImageRef, head: PushedHead,
        index: UpperIndex,
    ) -> str:
        """Make the image just pushed the head of the chain; "" or why it could not."""
        record = SaveRecord(
            identity=self.identity(info), user=self.user, registry=target.registry,
            repository=target.repository, manifest_digest=head.manifest_digest,
            config_digest=head.config_digest, layers=head.layers, chain=plan.chain,
            image_size=head.image_size, index=index,
        )  # fmt: skip
        try:
            self.store.save(record)
        except (RecordError, OSError) as e:
            log.warning("cannot record the save for the next one: %s", e)
            return f"not recorded for an incremental re-save: {e}"
        return ""

    def prune(self, live_ids: Callable[[], Iterable[str]]) -> list[str]:
        """Remove the records of containers gone from the node (best effort)."""
        try:
            return self.store.prune(live_ids())
        except (RecordError, OSError) as e:
            log.warning("cannot prune the node's save records: %s", e)
            return []


def earlier_image(client: RegistryClient, repository: str, record: SaveRecord) -> BaseImage | None:
    """The recorded image as the registry holds it, its layers placed in ``repository``
    (HEAD, or mounted from the recorded repository); None if gone or changed."""
    try:
        info = client.manifest(record.repository, record.manifest_digest, with_config=False)
    except (NotFound, InvalidRequest):
        return None
    if info is None or info.config_digest != record.config_digest:
        return None
    if len(info.layers) != record.layers:
        return None
    config = _config(client, record.repository, info.config_digest)
    diff_ids = (config.get("rootfs") or {}).get("diff_ids") or []
    if len(diff_ids) != record.layers:
        return None
    base = BaseImage(record.repository, info.digest, config, info.layers)
    return _place_layers(client, repository, base, [])
