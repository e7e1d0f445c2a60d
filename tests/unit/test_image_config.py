"""The one image config rule (builder_jobs/image_config.py), on real engine output.

The containers were started on the local cluster's nodes with settings (env incl. a
``FOO_TOKEN``, labels, working dir, user, stop signal; an entrypoint, an anonymous
volume, ``HOME``) and inspected; the same containers were then committed with the
engine's own commit and the image inspected (tests/captures/engines/README.md). The
rule must give what the engine's commit keeps, minus imgsave's labels and the
secret-looking env vars, wherever the inspect output lets it tell.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from builder_jobs.engines import parse_container_inspect
from builder_jobs.image_config import (
    ConfigRule,
    ContainerConfig,
    image_env,
    parse_container_config,
    saved_config,
)
from core.errors import ConfigError
from site_configs.schema import EngineKind, SaveSection, load_site_config

CAPTURES = Path(__file__).resolve().parents[1] / "captures" / "engines"
BASE_ENV = ("PATH=/bin",)  # localhost/imgsave-base, the captures' base image
BASE = {
    "architecture": "amd64",
    "os": "linux",
    "config": {"Env": list(BASE_ENV), "Cmd": ["/bin/sh"]},
    "rootfs": {"type": "layers", "diff_ids": ["sha256:" + "1" * 64]},
    "history": [{"created_by": "import"}],
}


def _inspect(name: str) -> dict[str, Any]:
    data = json.loads((CAPTURES / name).read_text())
    return dict(data[0])


def _committed(name: str) -> dict[str, Any]:
    """The image config the engine's own commit wrote (its ``image inspect``)."""
    return dict(_inspect(name)["Config"])


def _ruled(name: str, kind: EngineKind) -> dict[str, Any]:
    info = parse_container_inspect((CAPTURES / name).read_text(), kind)
    return saved_config(BASE, info.config, ConfigRule(), BASE_ENV).config["config"]


def test_podman_settings_are_what_podman_commit_keeps_minus_labels_and_secrets() -> None:
    ruled = _ruled("podman_container_inspect_settings.json", EngineKind.PODMAN)
    podman = _committed("podman_commit_image_inspect_settings.json")
    assert "FOO_TOKEN=s3cr3t" in podman["Env"]  # podman's commit keeps the secret
    assert ruled["Env"] == [e for e in podman["Env"] if not e.startswith("FOO_TOKEN=")]
    assert ruled["Env"] == ["MYVAR=hello", "PATH=/bin", "TERM=xterm", "container=podman"]
    assert ruled["Labels"] == {"team": "bio"} and podman["Labels"]["imgsave.owner"] == "alice"
    for key in ("Cmd", "WorkingDir", "User"):
        assert ruled[key] == podman[key], key
    # podman's commit drops a --stop-signal; the rule keeps it (docker's commit does too)
    assert ruled["StopSignal"] == "SIGINT" and "StopSignal" not in podman
    assert "Entrypoint" not in ruled and "Entrypoint" not in podman


def test_podman_entrypoint_and_anonymous_volume_as_podman_commit_keeps_them() -> None:
    ruled = _ruled("podman_container_inspect_entrypoint.json", EngineKind.PODMAN)
    podman = _committed("podman_commit_image_inspect_entrypoint.json")
    # inspect joins the entrypoint into one string "/bin/sh -c"; Path + Args keep the words
    assert _inspect("podman_container_inspect_entrypoint.json")["Config"]["Entrypoint"] == (
        "/bin/sh -c")
    assert ruled["Entrypoint"] == podman["Entrypoint"] == ["/bin/sh", "-c"]
    assert ruled["Cmd"] == podman["Cmd"] == ["sleep infinity"]
    assert ruled["Volumes"] == podman["Volumes"] == {"/data": {}}
    # the documented difference: a HOME given at run time is not kept when the base
    # image has none (inspect cannot tell it from the HOME podman sets in every container)
    assert "HOME=/work" in podman["Env"]
    assert ruled["Env"] == ["PATH=/bin", "TERM=xterm", "container=podman"]


def test_docker_settings_are_what_docker_commit_keeps_minus_labels_and_secrets() -> None:
    ruled = _ruled("docker_container_inspect_settings.json", EngineKind.DOCKER)
    docker = _committed("docker_commit_image_inspect_settings.json")
    kept = ("User", "ExposedPorts", "Env", "Entrypoint", "Cmd", "Volumes", "WorkingDir",
            "Labels", "StopSignal")
    expected = {k: docker[k] for k in kept if docker.get(k)}
    expected["Env"] = [e for e in docker["Env"] if not e.startswith("FOO_TOKEN=")]
    expected["Labels"] = {"team": "bio"}
    assert ruled == expected
    assert ruled["ExposedPorts"] == {"9000/tcp": {}} and ruled["Entrypoint"] == ["/bin/sh"]


def test_the_same_settings_give_the_same_config_from_either_engines_inspect() -> None:
    """The rule's output depends on the settings, not on the engine's inspect format."""
    podman = parse_container_config(_inspect("podman_container_inspect_settings.json"))
    docker = parse_container_config(_inspect("docker_container_inspect_settings.json"))
    assert (podman.user, podman.working_dir, podman.stop_signal) == (
        docker.user, docker.working_dir, docker.stop_signal) == ("0:0", "/opt", "SIGINT")
    assert dict(podman.labels) == dict(docker.labels)


def test_secret_looking_names_are_dropped_by_name_in_any_case_and_reported() -> None:
    container = ContainerConfig(env=(
        "github_token=x", "DB_PASSWORD=x", "AWS_REGION=eu", "MY_KEY=x", "KEYBOARD=us",
        "Client_Secret=x", "JUPYTER_ENABLE_LAB=yes", "HF_API_KEY=x", "github_token=y",
    ))
    saved = saved_config(BASE, container, ConfigRule())
    assert saved.config["config"]["Env"] == ["KEYBOARD=us", "JUPYTER_ENABLE_LAB=yes"]
    assert saved.dropped_env == ("github_token", "DB_PASSWORD", "AWS_REGION", "MY_KEY",
                                 "Client_Secret", "HF_API_KEY")
    assert "=x" not in json.dumps(saved.dropped_env)
    site = ConfigRule(secret_env_patterns=("JUPYTER_*",))
    assert saved_config(BASE, container, site).dropped_env == ("JUPYTER_ENABLE_LAB",)


def test_imgsave_labels_go_whatever_the_owner_label_is_named() -> None:
    container = ContainerConfig(labels={"site.owner": "alice", "imgsave.owner": "alice",
                                        "io.imgsave.request-id": "r", "keep": "1"})
    saved = saved_config(BASE, container, ConfigRule(owner_label="site.owner"))
    assert saved.config["config"]["Labels"] == {"keep": "1"}
    assert saved.dropped_labels == ("imgsave.owner", "io.imgsave.request-id", "site.owner")


def test_runtime_env_is_kept_only_where_the_base_image_sets_it() -> None:
    container = ContainerConfig(env=("HOME=/home/jovyan", "HOSTNAME=abc", "A=1"))
    assert saved_config(BASE, container, ConfigRule(), ["PATH=/bin"]).config["config"][
        "Env"] == ["A=1"]
    kept = saved_config(BASE, container, ConfigRule(), ["HOME=/root"]).config["config"]
    assert kept["Env"] == ["HOME=/home/jovyan", "A=1"]  # the container's value


def test_only_oci_keys_stay_and_the_base_settings_are_replaced() -> None:
    docker_style = dict(BASE, container="abc", docker_version="20.10.24",
                        container_config={"Env": ["FOO_TOKEN=s3cr3t"]})
    saved = saved_config(docker_style, ContainerConfig(cmd=("sleep", "infinity")),
                         ConfigRule())
    assert set(saved.config) == {"architecture", "os", "config", "rootfs", "history"}
    assert saved.config["config"] == {"Cmd": ["sleep", "infinity"]}  # not the base's /bin/sh
    assert "s3cr3t" not in json.dumps(saved.config)
    assert BASE["config"] == {"Env": ["PATH=/bin"], "Cmd": ["/bin/sh"]}  # input untouched


def test_default_stop_signal_is_not_written() -> None:
    container = ContainerConfig(stop_signal="SIGTERM")
    assert "StopSignal" not in saved_config(BASE, container, ConfigRule()).config["config"]
    raw = {"Config": {"StopSignal": 15}}
    assert parse_container_config(raw).stop_signal == "SIGTERM"
    assert parse_container_config({"Config": {"StopSignal": "int"}}).stop_signal == "SIGINT"


def test_image_env_of_a_config_or_an_image_inspect() -> None:
    assert image_env(BASE) == BASE_ENV
    assert image_env(_inspect("podman_commit_image_inspect_entrypoint.json"))[-1] == "HOME=/work"
    assert image_env({}) == ()


def test_missing_or_odd_inspect_fields_give_empty_settings() -> None:
    assert parse_container_config({}) == ContainerConfig(reported=frozenset())
    odd = {"Config": {"Env": "A=1", "Labels": [], "Cmd": None, "Volumes": []}}
    assert parse_container_config(odd) == ContainerConfig(
        reported=frozenset({"Env", "Labels", "Cmd", "Volumes"}))


def test_settings_an_inspect_does_not_report_come_from_the_image_through_the_rule() -> None:
    """nerdctl's inspect (its dockercompat struct) reports only Labels: the engine path
    keeps what nerdctl's commit pushed (command, env...), still minus the secrets."""
    info = parse_container_inspect(
        (CAPTURES / "nerdctl_container_inspect_running.json").read_text(), EngineKind.NERDCTL)
    assert info.config.reported == {"Labels"}
    pushed = dict(BASE, config={"Cmd": ["start-notebook.sh"], "User": "1000",
                                "Env": ["PATH=/bin", "HF_TOKEN=x"],
                                "Labels": {"imgsave.owner": "", "from-image": "1"}})
    saved = saved_config(pushed, info.config, ConfigRule(), BASE_ENV)
    assert saved.config["config"] == {
        "Cmd": ["start-notebook.sh"], "User": "1000", "Env": ["PATH=/bin"],
        "Labels": {"io.kubernetes.pod.name": "jupyter-alice",
                   "io.kubernetes.pod.namespace": "jhub",
                   "io.kubernetes.container.name": "notebook"},
    }  # the labels are the container's (reported), the rest the pushed image's
    assert saved.dropped_env == ("HF_TOKEN",)


def test_site_config_key_and_its_validation(tmp_path: Path) -> None:
    assert "*TOKEN*" in SaveSection().secret_env_patterns
    for bad in ("FOO=BAR", "", "A B"):
        with pytest.raises(ValueError):
            SaveSection(secret_env_patterns=[bad])
    text = (Path(__file__).resolve().parents[2] / "site_configs" / "local.toml").read_text()
    path = tmp_path / "site.toml"
    path.write_text(text + '\n[save]\nsecret_env_patterns = ["*TOKEN*", "JUPYTER_*"]\n')
    site = load_site_config(str(path))
    assert ConfigRule.from_site(site) == ConfigRule(("*TOKEN*", "JUPYTER_*"), "imgsave.owner")
    path.write_text(text + '\n[save]\nsecret_env_patterns = ["A=B"]\n')
    with pytest.raises(ConfigError, match="secret_env_patterns"):
        load_site_config(str(path))


def test_reported_names_are_escaped_bounded_and_counted() -> None:
    container = ContainerConfig(env=("EVIL\x1b[2J_TOKEN=x", "A" * 300 + "_TOKEN=x",
                                     *(f"T{i}_TOKEN=x" for i in range(60))))
    dropped = saved_config(BASE, container, ConfigRule()).dropped_env
    assert dropped[0] == "EVIL\\x1b[2J_TOKEN" and len(dropped[1]) == 100
    assert len(dropped) == 51 and dropped[-1] == "(12 more)"
    assert all(c.isprintable() for name in dropped for c in name)
