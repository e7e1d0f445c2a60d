"""The registry kinds a site can name (``registry.kind``), chosen by name from one table.

:func:`open_registry` turns the site's ``[registry]`` section into a
:class:`SiteRegistry`: the OCI distribution client (pushes, pulls, the report's presence
check), the catalog of a user's images, and the check a save passes before it is
submitted (the registry answers and, for a kind with quotas, the user's space has room).

A new kind is a :class:`SiteRegistry` subclass (its module holds the kind's own client
and catalog) and one entry in :data:`KINDS`; callers never ask which kind they hold.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from functools import cached_property
from typing import ClassVar

from core.errors import ConfigError
from registry.auth import load_credentials
from registry.catalog import Catalog, HarborCatalog, ImageCatalog
from registry.harbor import KIND as HARBOR_KIND
from registry.harbor import HarborClient
from registry.oci import RegistryClient
from site_configs.schema import RegistrySection

# Before a save is submitted, its space must have room for at least its new content.
# The size of the commit is known only on the node, so the pre-check refuses a project
# that is already full; the node's push then meets the registry's own quota enforcement.
MIN_EXPECTED_BYTES = 1


def registry_client(section: RegistrySection) -> RegistryClient:
    """The service's client for the site's registry (credentials from the section),
    without the retry policy save jobs use (:meth:`RegistryClient.from_section`)."""
    verify: bool | str = section.ca_bundle or section.tls_verify
    return RegistryClient(
        section.url,
        credentials=load_credentials(section),
        verify=verify,
        timeout=section.timeout_seconds,
    )


class SiteRegistry(ABC):
    """The site's registry as the service uses it: client, catalog and quota check."""

    name: ClassVar[str]  # its kind in the site config (registry.kind)

    def __init__(self, section: RegistrySection, client: RegistryClient) -> None:
        self.section = section
        self.client = client

    @property
    @abstractmethod
    def images(self) -> Catalog:
        """A user's images: list and delete, inside their namespace only."""

    @abstractmethod
    def check_quota(self, user: str, expected_bytes: int) -> None:
        """Refuse a save of ``expected_bytes`` that cannot fit in the user's space."""

    def check_before_save(self, user: str) -> None:
        """The registry answers, and the user's space has room for a new image."""
        self.client.ping()
        self.check_quota(user, MIN_EXPECTED_BYTES)


class OciRegistry(SiteRegistry):
    """Any OCI distribution registry: images read through the distribution API, no quota."""

    name = "oci"

    @cached_property
    def images(self) -> Catalog:
        return ImageCatalog(self.section, self.client)

    def check_quota(self, user: str, expected_bytes: int) -> None:
        """A plain registry has no quota to read: every save may go ahead."""


class HarborRegistry(SiteRegistry):
    """Harbor: images and the storage quota of the user's project, from Harbor's API."""

    name = HARBOR_KIND

    @cached_property
    def harbor(self) -> HarborClient:
        return HarborClient(self.client, self.section.namespace)

    @cached_property
    def images(self) -> Catalog:
        return HarborCatalog(self.section, self.harbor)

    def check_quota(self, user: str, expected_bytes: int) -> None:
        self.harbor.check_quota(user, expected_bytes)


# registry.kind in the site config -> its kind
KINDS: Mapping[str, type[SiteRegistry]] = {
    OciRegistry.name: OciRegistry,
    HarborRegistry.name: HarborRegistry,
}
REGISTRY_KIND_NAMES = tuple(sorted(KINDS))


def open_registry(section: RegistrySection) -> SiteRegistry:
    """The site's registry, for the kind ``section.kind`` names (one of
    :data:`REGISTRY_KIND_NAMES`)."""
    kind = KINDS.get(section.kind)
    if kind is None:
        raise ConfigError(
            f"unknown registry kind {section.kind!r} in the site config; valid: "
            f"{', '.join(REGISTRY_KIND_NAMES)}"
        )
    return kind(section, registry_client(section))
