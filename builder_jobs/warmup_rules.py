"""Which images a user may warm up: the one rule, used by the service and the node.

A user warms up only images in the site's registry under their own namespace (the
namespace their saves go to): never another registry (the node would fetch anything
for anyone), never another user's repository (a private image would land on a shared
node, readable by whoever runs there). Pure functions, no I/O.
"""

from __future__ import annotations

from collections.abc import Iterable

from builder_jobs.warmup_spec import IMAGE_SEPARATOR, MAX_IMAGES_PER_NODE
from core.errors import InvalidRequest, PermissionDenied
from registry.refs import ImageRef, host_of, parse_reference, user_namespace
from site_configs.schema import SiteConfig


def allowed_image(config: SiteConfig, user: str, text: str) -> ImageRef:
    """``text`` (``alice/env:v1``, ``env:v1``, ``host/alice/env@sha256:...``) as a
    reference in the site's registry that ``user`` may warm up.

    InvalidRequest for a malformed reference, another registry or no tag/digest;
    PermissionDenied for a repository outside the user's namespace.
    """
    site_host = host_of(config.registry.host)
    namespace = user_namespace(user, config.registry.namespace)
    ref = parse_reference(text, site_host)
    if ref.registry.lower() != site_host.lower():
        raise InvalidRequest(
            f"image {text!r} is in registry {ref.registry!r}; warm-ups pull only from "
            f"this site's registry {site_host!r}"
        )
    if not ref.tag and not ref.digest:
        raise InvalidRequest(f"image {text!r} has no tag; give one, e.g. {ref.repository}:v1")
    repository = ref.repository
    if "/" not in repository:  # a bare name is the user's own
        repository = f"{namespace}/{repository}"
    if not repository.startswith(namespace + "/"):
        raise PermissionDenied(
            f"image {text!r} is outside your namespace {namespace + '/'!r}: you can warm "
            "up only your own images"
        )
    return ImageRef(site_host, repository, ref.tag, ref.digest)


def checked_images(config: SiteConfig, user: str, images: Iterable[str]) -> tuple[str, ...]:
    """Every image resolved by :func:`allowed_image`, without repeats; at least one and
    at most :data:`MAX_IMAGES_PER_NODE`."""
    refs = tuple(dict.fromkeys(str(allowed_image(config, user, i)) for i in images))
    if not refs:
        raise InvalidRequest("name at least one image to warm up")
    if len(refs) > MAX_IMAGES_PER_NODE:
        raise InvalidRequest(
            f"{len(refs)} images for one node; a warm-up takes at most {MAX_IMAGES_PER_NODE}"
        )
    if any(IMAGE_SEPARATOR in r for r in refs):  # parse_reference refuses spaces already
        raise InvalidRequest("an image reference must not contain spaces")
    return refs
