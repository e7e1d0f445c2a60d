"""Wire the parts for one site: scheduler, registry (client and image catalog), save service."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

from api.service.saves import SaveService
from registry.catalog import Catalog
from registry.kinds import SiteRegistry, open_registry
from registry.oci import RegistryClient
from scheduler_glue import make_scheduler
from scheduler_glue.base import Scheduler
from site_configs.schema import SiteConfig


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
        """The registry answers, and (a kind with quotas) the user's space has room."""
        self.site_registry.check_before_save(user)

    @cached_property
    def site_registry(self) -> SiteRegistry:
        return open_registry(self.config.registry)

    @property
    def registry(self) -> RegistryClient:
        return self.site_registry.client

    @property
    def images(self) -> Catalog:
        return self.site_registry.images
