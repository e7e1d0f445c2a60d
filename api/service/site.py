"""Wire the parts for one site: scheduler, registry client, save service, image catalog."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

from api.catalog import Catalog, HarborCatalog, ImageCatalog
from api.service.saves import SaveService
from registry.auth import load_credentials
from registry.harbor import HarborClient
from registry.oci import RegistryClient
from scheduler_glue import make_scheduler
from scheduler_glue.base import Scheduler
from site_configs.schema import RegistryKind, SiteConfig

# Before a save is submitted, its project must have room for at least its new content.
# The size of the commit is known only on the node, so the pre-check refuses a project
# that is already full; the node's push then meets Harbor's own quota enforcement.
MIN_EXPECTED_BYTES = 1


def registry_client(config: SiteConfig) -> RegistryClient:
    section = config.registry
    verify: bool | str = section.ca_bundle or section.tls_verify
    return RegistryClient(
        section.url,
        credentials=load_credentials(section),
        verify=verify,
        timeout=section.timeout_seconds,
    )


@dataclass
class Site:
    """Everything built from one site config, lazily (a status call needs no registry)."""

    config: SiteConfig

    @cached_property
    def scheduler(self) -> Scheduler:
        return make_scheduler(self.config.scheduler)

    @cached_property
    def saves(self) -> SaveService:
        return SaveService(self.config, self.scheduler, registry_check=self.check_registry)

    def check_registry(self, user: str) -> None:
        """The registry answers, and (Harbor) the user's project has room."""
        self.registry.ping()
        if self.harbor is not None:
            self.harbor.check_quota(user, MIN_EXPECTED_BYTES)

    @cached_property
    def harbor(self) -> HarborClient | None:
        if self.config.registry.kind is not RegistryKind.HARBOR:
            return None
        return HarborClient(self.registry, self.config.registry.namespace)

    @cached_property
    def registry(self) -> RegistryClient:
        return registry_client(self.config)

    @cached_property
    def images(self) -> Catalog:
        if self.harbor is not None:
            return HarborCatalog(self.config, self.harbor)
        return ImageCatalog(self.config, self.registry)
