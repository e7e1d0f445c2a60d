"""Engine argv builders and inspect parsers.

podman parsing runs on real captured output (tests/captures/engines/podman_*). docker and
nerdctl are not installed here (nerdctl is not installable at all): their argv is checked
against their documented CLIs (docker CLI reference; nerdctl docs/command-reference.md)
and their inspect samples are hand-written to the documented shape
(tests/captures/engines/README.md).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from builder_jobs.engine_choice import engine_for
from builder_jobs.engines import (
    ContainerInfo,
    Docker,
    InspectParseError,
    Nerdctl,
    Podman,
    parse_container_inspect,
    parse_image_size,
    parse_repo_digest,
    temporary_image,
)
from builder_jobs.image_config import ContainerConfig
from core.errors import ConfigError
from site_configs.schema import EngineKind, EngineSection

GOLDEN = Path(__file__).resolve().parents[1] / "captures" / "engines"
PODMAN = ("podman", "--runtime", "runc", "--cgroup-manager", "cgroupfs")
TARGET = "harbor.example.org/u-alice/torch:v1"
TEMP = "localhost/imgsave-tmp:0a1b2c"


def test_temporary_image_is_per_request() -> None:
    assert temporary_image("0a1b2c") == TEMP
    with pytest.raises(ConfigError):
        temporary_image("../x")


def test_podman_argv() -> None:
    e = Podman(command=PODMAN, tls_verify=False)
    assert e.inspect_container("jupyter-alice") == [
        *PODMAN,
        "container",
        "inspect",
        "jupyter-alice",
    ]
    assert e.commit("jupyter-alice", TEMP, clear_labels=["imgsave.owner"]) == [
        *PODMAN, "commit", "--pause=true", "--format", "oci",
        "--change", 'LABEL imgsave.owner=""', "jupyter-alice", TEMP,
    ]  # fmt: skip
    assert e.push(TEMP, TARGET, authfile="/etc/imgsave/auth.json") == [
        [*PODMAN, "push", "--format", "oci", "--authfile", "/etc/imgsave/auth.json",
         "--tls-verify=false", TEMP, f"docker://{TARGET}"],
    ]  # fmt: skip
    assert e.local_names_after_push(TEMP, TARGET) == [TEMP]
    assert e.rmi([TEMP]) == [*PODMAN, "rmi", TEMP]
    assert e.export("c1", "/tmp/x.tar") == [*PODMAN, "export", "--output", "/tmp/x.tar", "c1"]


def test_podman_verifies_tls_unless_told_not_to() -> None:
    (argv,) = Podman(command=("podman",)).push(TEMP, TARGET)
    assert not any(a.startswith("--tls-verify") for a in argv)
    assert "--authfile" not in argv


def test_docker_argv_per_cli_reference() -> None:
    e = Docker(command=("docker",), tls_verify=False)
    assert e.commit("c1", TEMP, clear_labels=["imgsave.owner"]) == [
        "docker", "commit", "--pause=true", "--change", 'LABEL imgsave.owner=""', "c1", TEMP,
    ]  # fmt: skip
    # docker has no per-command TLS or auth flags: daemon.json and ~/.docker/config.json
    assert e.push(TEMP, TARGET, authfile="/ignored") == [
        ["docker", "tag", TEMP, TARGET],
        ["docker", "push", TARGET],
    ]
    assert e.local_names_after_push(TEMP, TARGET) == [TEMP, TARGET]
    assert e.rmi([TEMP, TARGET]) == ["docker", "rmi", TEMP, TARGET]
    assert e.export("c1", "/o.tar") == ["docker", "export", "--output", "/o.tar", "c1"]


def test_nerdctl_argv_per_command_reference() -> None:
    """Golden argv from nerdctl's docs/command-reference.md (nerdctl is not installable here)."""
    sudo = ("sudo", "-n", "/usr/local/bin/nerdctl")
    e = Nerdctl(command=sudo, namespace="k8s.io")
    ns = [*sudo, "--namespace", "k8s.io"]
    assert e.inspect_container("c1") == [*ns, "container", "inspect", "c1"]
    # `nerdctl commit --change` supports only CMD and ENTRYPOINT: no label clearing
    assert e.commit("c1", TEMP, clear_labels=["imgsave.owner"]) == [
        *ns, "commit", "--pause=true", "c1", TEMP,
    ]  # fmt: skip
    assert e.push(TEMP, TARGET) == [[*ns, "tag", TEMP, TARGET], [*ns, "push", TARGET]]
    assert e.rmi([TEMP, TARGET]) == [*ns, "rmi", TEMP, TARGET]
    insecure = Nerdctl(command=("nerdctl",), namespace="default", tls_verify=False)
    assert insecure.push(TEMP, TARGET)[1] == [
        "nerdctl", "--namespace", "default", "--insecure-registry", "push", TARGET,
    ]  # fmt: skip
    assert Nerdctl(command=("nerdctl",)).commit("c", "i")[:2] == ["nerdctl", "commit"]


def test_engine_for_site_config() -> None:
    section = EngineSection(kind=EngineKind.NERDCTL, command=["nerdctl"], namespace="k8s.io")
    engine = engine_for(section)
    assert isinstance(engine, Nerdctl) and engine.namespace == "k8s.io"
    podman = engine_for(EngineSection(kind=EngineKind.PODMAN, command=list(PODMAN)))
    assert isinstance(podman, Podman) and podman.tls_verify
    with pytest.raises(ConfigError, match="only nerdctl and containerd"):
        engine_for(EngineSection(kind=EngineKind.PODMAN, command=["podman"], namespace="x"))


def test_parse_real_podman_running_container() -> None:
    info = parse_container_inspect(
        (GOLDEN / "podman_container_inspect_running.json").read_text(), EngineKind.PODMAN
    )
    assert info.name == "jupyter-alice"
    assert len(info.id) == 64
    assert info.image == "localhost/imgsave-base:latest"
    assert info.image_digest is not None and info.image_digest.startswith("sha256:")
    assert info.labels["imgsave.owner"] == "alice"
    assert info.running is True
    assert len(info.image_id) == 64


def test_parse_real_podman_created_container() -> None:
    info = parse_container_inspect(
        (GOLDEN / "podman_container_inspect_created.json").read_text(), EngineKind.PODMAN
    )
    assert (info.name, info.running, info.labels.get("imgsave.owner")) == (
        "stopped-bob", False, "bob",
    )  # fmt: skip


def test_parse_docker_sample() -> None:
    info = parse_container_inspect(
        (GOLDEN / "docker_container_inspect_running.json").read_text(), EngineKind.DOCKER
    )
    assert info == ContainerInfo(
        name="jupyter-alice",
        id="5f8c6f3e0b8a1f2f3d7e4c5b6a79880123456789abcdef0123456789abcdef01",
        image="quay.io/jupyter/scipy-notebook:2024-04-29",
        image_digest=None,
        labels={
            "imgsave.owner": "alice",
            "maintainer": "Jupyter Project <jupyter@googlegroups.com>",
        },
        running=True,
        image_id="0a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f9",
        config=ContainerConfig(
            cmd=("start-notebook.sh",),
            env=("PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",),
            working_dir="/home/jovyan",
            user="1000",
            labels={
                "imgsave.owner": "alice",
                "maintainer": "Jupyter Project <jupyter@googlegroups.com>",
            },
            reported=frozenset({"Cmd", "Env", "WorkingDir", "User", "Labels"}),
        ),
    )


def test_parse_nerdctl_sample() -> None:
    info = parse_container_inspect(
        (GOLDEN / "nerdctl_container_inspect_running.json").read_text(), EngineKind.NERDCTL
    )
    assert info.image == "harbor.example.org/library/scipy-notebook:2024-04-29"
    assert info.image_digest is None and info.running
    assert info.labels["io.kubernetes.pod.namespace"] == "jhub"


def test_parse_repo_digest() -> None:
    docker = parse_repo_digest((GOLDEN / "docker_image_inspect.json").read_text())
    assert docker == "sha256:7d2f1c9e3b4a5d6e7f8091a2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6"
    podman = parse_repo_digest((GOLDEN / "podman_image_inspect.json").read_text())
    assert podman is not None and podman.startswith("sha256:")


@pytest.mark.parametrize("text", ["", "[]", "[{}, {}]", "42", '[{"Name": "x"}]', "not json"])
def test_parse_errors_are_clear(text: str) -> None:
    with pytest.raises(InspectParseError):
        parse_container_inspect(text, EngineKind.PODMAN)


def test_parse_image_size_of_real_podman_output() -> None:
    assert parse_image_size((GOLDEN / "podman_image_inspect.json").read_text()) > 1_000_000
    assert parse_image_size("[{}]") == 0
