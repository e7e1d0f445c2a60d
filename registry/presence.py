"""Are the images a report counts still in the registry? (``--check-registry``)

Slow by nature (HTTP per repository and per image), so a report asks only when told.
Batched per repository: one tag listing first; a repository without tags (deleted, or
every image in it deleted) answers for all its images at once. Otherwise one ``HEAD``
per distinct digest (an image stays present while its digest resolves, even if its tag
was moved to a newer save); an image saved without a digest (a SIF artifact recorded by
reference) is present while its tag is listed.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Iterable
from typing import Protocol

from core.errors import InvalidRequest
from registry.refs import ImageRef, host_of, parse_reference

log = logging.getLogger(__name__)


class TagsAndDigests(Protocol):
    """What the check needs of :class:`registry.oci.RegistryClient`."""

    def list_tags(self, repository: str) -> list[str]: ...

    def manifest_digest(self, repository: str, reference: str) -> str | None: ...


def image_presence(
    client: TagsAndDigests, registry_url: str, images: Iterable[tuple[str, str]]
) -> dict[tuple[str, str], bool]:
    """(reference, digest) → whether it is still in the registry at ``registry_url``.

    References to another registry, or that do not parse, are left out (not counted as
    present or deleted).
    """
    host = host_of(registry_url)
    by_repository: dict[str, list[tuple[tuple[str, str], ImageRef]]] = defaultdict(list)
    for reference, digest in set(images):
        try:
            ref = parse_reference(reference, host)
        except InvalidRequest:
            log.warning("report: cannot check %r: not an image reference", reference)
            continue
        if ref.registry != host:
            continue
        by_repository[ref.repository].append(((reference, digest), ref))
    found: dict[tuple[str, str], bool] = {}
    for repository, wanted in sorted(by_repository.items()):
        tags = set(client.list_tags(repository))
        resolved: dict[str, bool] = {}
        for key, ref in wanted:
            digest = key[1] or ref.digest
            if not tags:
                found[key] = False
            elif digest:
                if digest not in resolved:
                    resolved[digest] = client.manifest_digest(repository, digest) is not None
                found[key] = resolved[digest]
            else:
                found[key] = ref.tag in tags
    return found
