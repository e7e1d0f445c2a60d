"""What a user asks for (:class:`SaveRequest`), what a submit answers
(:class:`SubmittedSave`), and the checks a request passes before anything is written."""

from __future__ import annotations

import re
from dataclasses import dataclass

from core.errors import InvalidRequest
from registry.refs import ImageRef, check_unix_name, target_for_user
from site_configs.schema import ImageFormat, SiteConfig

# Container names as podman, docker and nerdctl accept them.
_CONTAINER_NAME = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9_.-]{0,253}")
_NODE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}")


@dataclass(frozen=True)
class SaveRequest:
    """What a user asks for: save ``container`` as ``target`` (``name:tag``)."""

    user: str
    container: str
    target: str
    formats: tuple[ImageFormat, ...] = (ImageFormat.OCI,)
    category: str = "cpu"
    node: str = ""
    job_id: str = ""  # a running job of the user's whose node hosts the container
    full: bool = False  # never build on the container's earlier save (incremental-save.md)
    in_job: bool = False  # run as a step of the user's job ``job_id`` (install-slurm.md)


@dataclass(frozen=True)
class SubmittedSave:
    job_id: str
    request_id: str
    target: ImageRef
    node: str


def validate_request(
    config: SiteConfig, request: SaveRequest
) -> tuple[ImageRef, tuple[ImageFormat, ...]]:
    """Check a request against the site without side effects; return its target and
    formats (the job id of ``--job`` is checked by the service, which knows the grammar)."""
    check_unix_name(request.user)
    if not _CONTAINER_NAME.fullmatch(request.container):
        raise InvalidRequest(
            f"container name {request.container!r} is invalid: use letters, digits, "
            "'_', '.' and '-', starting with a letter or digit"
        )
    formats = tuple(dict.fromkeys(request.formats))
    if not formats:
        raise InvalidRequest("give at least one format (oci, sif)")
    for fmt in formats:
        if fmt not in config.formats:
            allowed = ", ".join(f.value for f in config.formats)
            raise InvalidRequest(f"format {fmt.value!r} is not offered here (use {allowed})")
    if request.category not in config.categories:
        allowed = ", ".join(config.categories)
        raise InvalidRequest(f"category {request.category!r} is unknown (use {allowed})")
    if request.in_job:
        if not request.job_id:
            raise InvalidRequest("--in-job runs the save as a step of your running job: "
                                 "give that job with --job JOBID")  # fmt: skip
    elif bool(request.node) == bool(request.job_id):
        raise InvalidRequest("give exactly one of --node NODE or --job JOBID")
    if request.node and not _NODE_NAME.fullmatch(request.node):
        # one plain node name: never a list or range that would pin to several
        raise InvalidRequest(f"node {request.node!r} is not a node name")
    target = target_for_user(
        request.target, request.user, config.registry.namespace, config.registry.url
    )
    return target, formats
