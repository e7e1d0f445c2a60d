"""Wire the parts for one site: scheduler, registry client, save service, image catalog."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

from api.catalog import ImageCatalog
from api.service import SaveService
from registry.auth import load_credentials
from registry.oci import RegistryClient
from scheduler_glue import make_scheduler
from scheduler_glue.base import Scheduler
from site_configs.schema import SiteConfig


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
        return SaveService(self.config, self.scheduler, registry_check=self.registry.ping)

    @cached_property
    def registry(self) -> RegistryClient:
        return registry_client(self.config)

    @cached_property
    def images(self) -> ImageCatalog:
        return ImageCatalog(self.config, self.registry)
