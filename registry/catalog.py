"""A user's images in the registry: list and delete, only ever inside their namespace.

One catalog per registry kind (:mod:`registry.kinds` picks it): :class:`ImageCatalog`
reads any OCI distribution registry, :class:`HarborCatalog` Harbor's API v2.0. Both hide
the helper tags a save makes for itself (:func:`is_helper_tag`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from core.errors import NotFound
from registry.oras import SIF_CONFIG_MEDIA_TYPE
from registry.refs import ImageRef, host_of, target_for_user, user_namespace
from site_configs.schema import RegistrySection

if TYPE_CHECKING:
    from registry.harbor import HarborClient
    from registry.oci import RegistryClient

# The tag a streaming save gives its base image when the engine pushes it once
# (builder_jobs' base image step); the save removes it, the node's epilog too.
CACHE_TAG_PREFIX = "imgsave-base-"


def is_helper_tag(tag: str) -> bool:
    """Tags a save makes for itself (the base image pushed once), never the user's."""
    return tag.startswith(CACHE_TAG_PREFIX)


@dataclass(frozen=True)
class ImageInfo:
    repository: str
    tag: str
    digest: str
    size_bytes: int
    created: str
    format: str
    category: str
    reference: str

    def to_dict(self) -> dict[str, object]:
        return {
            "repository": self.repository,
            "tag": self.tag,
            "digest": self.digest,
            "size_bytes": self.size_bytes,
            "created": self.created,
            "format": self.format,
            "category": self.category,
            "reference": self.reference,
        }


class Catalog(Protocol):
    """What the CLI, API and portal need from a registry: a user's images."""

    def list(self, user: str) -> list[ImageInfo]: ...

    def delete(self, user: str, name_tag: str) -> str: ...


class ImageCatalog:
    """The images a user owns on a plain OCI registry: every repository under their
    namespace, read through the distribution API."""

    def __init__(self, section: RegistrySection, client: RegistryClient) -> None:
        self.section = section
        self.client = client
        self.host = host_of(section.url)

    def namespace(self, user: str) -> str:
        return user_namespace(user, self.section.namespace)

    def list(self, user: str) -> list[ImageInfo]:
        prefix = self.namespace(user) + "/"
        images: list[ImageInfo] = []
        for repository in self.client.list_repositories(prefix):
            if not repository.startswith(prefix):
                continue
            for tag in sorted(self.client.list_tags(repository)):
                if is_helper_tag(tag):
                    continue  # a save's own base-image tag, not an image of the user's
                info = self.client.manifest(repository, tag)
                if info is None:
                    continue  # deleted between the listing and now
                annotations = info.annotations or {}
                is_sif = info.config_media_type == SIF_CONFIG_MEDIA_TYPE
                images.append(
                    ImageInfo(
                        repository=repository,
                        tag=tag,
                        digest=info.digest,
                        size_bytes=info.total_size,
                        created=info.created or "",
                        format="sif" if is_sif else "oci",
                        category=annotations.get("io.imgsave.category", ""),
                        reference=f"{self.host}/{repository}:{tag}",
                    )
                )
        return images

    def resolve(self, user: str, name_tag: str) -> ImageRef:
        """The user's image ``name_tag``; refuses names outside their namespace."""
        return target_for_user(name_tag, user, self.section.namespace, self.host)

    def delete(self, user: str, name_tag: str) -> str:
        """Delete the user's image by tag (the manifest it points to); return its digest."""
        ref = self.resolve(user, name_tag)
        info = self.client.manifest(ref.repository, ref.tag)
        if info is None:
            raise NotFound(f"image {ref.name} does not exist")
        self.client.delete_manifest(ref.repository, info.digest)
        return info.digest


class HarborCatalog:
    """The images a user owns in their Harbor project, through Harbor's API v2.0
    (sizes, push times and tags in one paged listing instead of a manifest per tag)."""

    def __init__(self, section: RegistrySection, client: HarborClient) -> None:
        self.section = section
        self.client = client

    def list(self, user: str) -> list[ImageInfo]:
        try:
            found = self.client.list_images(user)
        except NotFound:
            return []  # no project yet: the user has never saved
        return [
            ImageInfo(i.repository, i.tag, i.digest, i.size_bytes, i.created, i.format,
                      i.category, i.reference)
            for i in found if not is_helper_tag(i.tag)
        ]

    def delete(self, user: str, name_tag: str) -> str:
        ref = target_for_user(name_tag, user, self.section.namespace, host_of(self.section.url))
        return self.client.delete_image(user, ref.repository, ref.tag)
