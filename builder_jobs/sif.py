"""SIF output of a save (not implemented yet: a SIF request fails cleanly)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from builder_jobs.events import FailureKind
from builder_jobs.failures import SaveFailed

if TYPE_CHECKING:
    from builder_jobs.engines import ContainerInfo
    from builder_jobs.node_save import SaveRun
    from registry.oci import RegistryClient
    from registry.refs import ImageRef

SIF_METHOD = "export-squashfs"


@dataclass(frozen=True)
class SifOutput:
    """Where the SIF went: a file, an ORAS reference, or both."""

    path: str = ""
    reference: str = ""
    digest: str = ""
    size_bytes: int = 0


def save_sif(run: SaveRun, info: ContainerInfo, client: RegistryClient, ref: ImageRef) -> SifOutput:
    """Export the container, squash it and wrap it in a SIF."""
    raise SaveFailed(FailureKind.INVALID, "SIF output is not implemented yet on this node")
