"""Site config validation: shipped files load, bad ones fail naming the key and file."""

from __future__ import annotations

from pathlib import Path

import pytest

from core.errors import ConfigError
from site_configs.schema import load_site_config

CONFIGS = Path(__file__).resolve().parents[2] / "site_configs"


@pytest.mark.parametrize("name", ["local", "kisti-gpu-harbor", "pbs-sif-oras"])
def test_shipped_configs_validate(name: str) -> None:
    config = load_site_config(CONFIGS / f"{name}.toml")
    assert config.source_path.endswith(f"{name}.toml")
    assert config.scheduler.partition


def test_example_sites_cover_both_schedulers() -> None:
    kinds = {load_site_config(p).scheduler.kind for p in CONFIGS.glob("*.toml")}
    assert kinds == {"slurm", "pbs"}


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "site.toml"
    path.write_text(text)
    return path


BASE = """
name = "t"
spool_dir = "/tmp/spool"
[scheduler]
kind = "slurm"
partition = "imgsave"
[engine]
kind = "podman"
command = ["podman"]
[registry]
url = "https://r.example.org"
"""


def test_minimal_config_gets_defaults(tmp_path: Path) -> None:
    config = load_site_config(_write(tmp_path, BASE))
    assert config.registry.tls_verify is True
    assert config.registry.namespace == "{user}"
    assert config.scheduler.time_limit_minutes == 30


@pytest.mark.parametrize(
    ("change", "words"),
    [
        (BASE.replace('command = ["podman"]', 'command = ["podman"]\ncomand = 1'),
         "engine.comand: unknown key"),
        (BASE.replace('kind = "slurm"', 'kind = "Slurm"'), "scheduler.kind"),
        (BASE.replace("https://r.example.org", "r.example.org"), "registry.url"),
        (BASE + 'namespace = "shared"\n', "registry.namespace"),
        (BASE.replace('command = ["podman"]', "command = []"), "engine.command"),
        (BASE + "[sif]\noutput_dir = \"/shared/sif\"\n", "sif.output_dir"),
        (BASE.replace('name = "t"', ""), "name"),
        ("name = ", "cannot be read"),
    ],
)
def test_bad_configs_name_the_key_and_file(tmp_path: Path, change: str, words: str) -> None:
    path = _write(tmp_path, change)
    with pytest.raises(ConfigError) as raised:
        load_site_config(path)
    assert words in str(raised.value)
    assert str(path) in str(raised.value)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_site_config(tmp_path / "nope.toml")


def test_pbs_site_builds_a_pbs_scheduler_with_its_history_settings() -> None:
    from scheduler_glue import make_scheduler
    from scheduler_glue.pbs.backend import PbsScheduler

    config = load_site_config(CONFIGS / "pbs-sif-oras.toml")
    scheduler = make_scheduler(config.scheduler)
    assert isinstance(scheduler, PbsScheduler)
    assert scheduler.server_history is True
    assert str(scheduler.accounting_log_dir) == "/var/spool/pbs/server_priv/accounting"
