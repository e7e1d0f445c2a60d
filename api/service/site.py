"""Wire the parts for one site: scheduler, registry (client and image catalog), save service."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING

from api.service.saves import SaveService
from scheduler_glue import make_scheduler
from scheduler_glue.base import Scheduler
from site_configs.schema import SiteConfig

if TYPE_CHECKING:  # the registry's client (requests) is imported when first used
    from registry.catalog import Catalog
    from registry.kinds import SiteRegistry
    from registry.oci import RegistryClient


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
        from registry.kinds import open_registry

        return open_registry(self.config.registry)

    @property
    def registry(self) -> RegistryClient:
        return self.site_registry.client

    @property
    def images(self) -> Catalog:
        return self.site_registry.images
