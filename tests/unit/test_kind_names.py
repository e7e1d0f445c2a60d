"""Scheduler and registry kinds are names chosen from their backend's table.

The schema accepts any lower-case name (it knows no backend); the table refuses an
unknown one, listing the valid names, when the config is used.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from core.errors import ConfigError
from registry.kinds import REGISTRY_KIND_NAMES, open_registry
from scheduler_glue import SCHEDULER_NAMES, make_scheduler
from site_configs.schema import load_site_config

SITE = """
name = "t"
spool_dir = "/tmp/spool"
[scheduler]
kind = "{scheduler}"
partition = "imgsave"
[engine]
kind = "podman"
command = ["podman"]
[registry]
kind = "{registry}"
url = "https://r.example.org"
"""


def _site(tmp_path: Path, scheduler: str = "slurm", registry: str = "oci") -> Path:
    path = tmp_path / "site.toml"
    path.write_text(SITE.format(scheduler=scheduler, registry=registry))
    return path


def test_an_unknown_scheduler_kind_is_refused_when_used_listing_the_valid_ones(
    tmp_path: Path,
) -> None:
    config = load_site_config(_site(tmp_path, scheduler="lsf"))
    assert config.scheduler.kind == "lsf"
    with pytest.raises(ConfigError) as raised:
        make_scheduler(config.scheduler)
    assert str(raised.value) == (
        "unknown scheduler kind 'lsf' in the site config; valid: pbs, slurm"
    )
    assert SCHEDULER_NAMES == ("pbs", "slurm")


def test_an_unknown_registry_kind_is_refused_when_used_listing_the_valid_ones(
    tmp_path: Path,
) -> None:
    config = load_site_config(_site(tmp_path, registry="quay"))
    assert config.registry.kind == "quay"
    with pytest.raises(ConfigError) as raised:
        open_registry(config.registry)
    assert str(raised.value) == (
        "unknown registry kind 'quay' in the site config; valid: harbor, oci"
    )
    assert REGISTRY_KIND_NAMES == ("harbor", "oci")


@pytest.mark.parametrize(
    ("scheduler", "registry", "key"),
    [("Slurm", "oci", "scheduler.kind"), ("slurm", "OCI", "registry.kind"),
     ("", "oci", "scheduler.kind"), ("slurm", "oci; rm", "registry.kind")],
)
def test_a_kind_that_is_not_a_lower_case_name_fails_at_load(
    tmp_path: Path, scheduler: str, registry: str, key: str
) -> None:
    with pytest.raises(ConfigError, match=f"{key}: .*is not a lower-case name"):
        load_site_config(_site(tmp_path, scheduler, registry))


def test_the_registry_kind_defaults_to_oci(tmp_path: Path) -> None:
    path = _site(tmp_path)
    path.write_text(path.read_text().replace('kind = "oci"\n', ""))
    assert load_site_config(path).registry.kind == "oci"
