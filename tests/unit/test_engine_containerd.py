"""containerd through ``ctr``: argv, parsers on real ``ctr`` 1.6 output
(tests/captures/engines/ctr_*), the streaming hooks replayed against those captures,
and the choice of engines per node."""

from __future__ import annotations

import hashlib
import shutil
from collections.abc import Sequence
from pathlib import Path

import pytest

from builder_jobs.engine_choice import engine_for, engines_on, runtime_engine
from builder_jobs.engine_containerd import (
    CONTENT_DIR,
    Containerd,
    EngineCannot,
    parse_containers_info,
    parse_images_ls,
    parse_snapshot_mounts,
    parse_task_status,
    platform_manifest,
    repo_digest,
)
from builder_jobs.engines import Docker, Podman
from builder_jobs.events import EventLog, FailureKind
from builder_jobs.failures import SaveFailed
from builder_jobs.node_guard import GuardedRunner, JobGuard, record_path
from builder_jobs.node_save import locate
from builder_jobs.run import SaveRun
from builder_jobs.spec import SaveSpec
from builder_jobs.streaming.overlay_layer import StreamingUnavailable
from builder_jobs.streaming.overlay_storage import ReadsOwnStorage, check_overlay_mount
from core.errors import CommandFailed, ConfigError
from core.runner import CommandResult
from site_configs.schema import (
    EngineKind,
    EngineRuntime,
    EngineSection,
    ImageFormat,
    load_site_config,
)

TOP = Path(__file__).resolve().parents[2]
CAPTURES = TOP / "tests" / "captures" / "engines"
CTR = ["ctr", "--namespace", "k8s.io"]
UPPER = "/var/lib/containerd/io.containerd.snapshotter.v1.overlayfs/snapshots/14/fs"
MANIFEST = "sha256:050714ac509b10bfce2b542d2a51e55c436108e812a6603640aaf76f3e0508be"
CONFIG = "sha256:9f1872570cce43c22a008ee681f7d8418a5cc0818a26d75ba9ecf1170911c73f"


def capture(name: str) -> str:
    return (CAPTURES / name).read_text()


class Replay:
    """A runner answering each ctr command with its real captured output."""

    def __init__(self, answers: dict[tuple[str, ...], str]) -> None:
        self.answers = answers
        self.calls: list[list[str]] = []

    def __call__(self, argv: Sequence[str], **kwargs: object) -> CommandResult:
        self.calls.append(list(argv))
        return CommandResult(tuple(argv), 0, self.answers[tuple(argv)], "")


def replay(info: str = "ctr_containers_info_running.json", tasks: str = "ctr_tasks_ls.txt",
           images: str = "127.0.0.1:5000/library/imgsave-base:latest") -> Replay:
    return Replay({
        (*CTR, "containers", "info", "cap-ctr"): capture(info),
        (*CTR, "snapshots", "--snapshotter", "overlayfs", "mounts", "/mnt", "cap-ctr"):
            capture("ctr_snapshots_mounts_overlayfs.txt"),
        (*CTR, "tasks", "ls"): capture(tasks),
        (*CTR, "images", "ls", f"name=={images}"): capture("ctr_images_ls.txt"),
    })


def test_argv_is_ctr_in_the_namespace() -> None:
    ctr = Containerd(command=("ctr",))
    assert ctr.inspect_container("c") == [*CTR, "containers", "info", "c"]
    assert ctr.pause("c") == [*CTR, "tasks", "pause", "c"]
    assert ctr.resume("c") == [*CTR, "tasks", "resume", "c"]
    assert ctr.export("c", "/w/rootfs.tar") == [
        "tar", "--numeric-owner", "--one-file-system", "-C",
        "/run/containerd/io.containerd.runtime.v2.task/k8s.io/c/rootfs", "-cf", "/w/rootfs.tar",
        ".",
    ]  # fmt: skip
    assert Containerd(command=("ctr",), namespace="ns1").base == ["ctr", "--namespace", "ns1"]
    assert ctr.local_names_after_push("x", "y") == []
    with pytest.raises(EngineCannot, match="no commit"):
        ctr.commit("c", "i")
    assert isinstance(ctr, ReadsOwnStorage)
    assert not isinstance(Podman(command=("podman",)), ReadsOwnStorage)


def test_parse_real_containers_info() -> None:
    record = parse_containers_info(capture("ctr_containers_info_running.json"))
    assert record.id == "cap-ctr" and record.image == "localhost/imgsave-base:latest"
    assert record.labels["imgsave.owner"] == "alice"
    assert (record.snapshotter, record.snapshot_key) == ("overlayfs", "cap-ctr")
    assert record.process.args == ("sleep", "infinity") and record.process.env == ("PATH=/bin",)
    assert record.process.cwd == "/" and record.process.user == "0:0"
    info = Containerd(command=("ctr",)).parse_container(capture("ctr_containers_info_running.json"))
    assert (info.name, info.id, info.labels["imgsave.owner"]) == ("cap-ctr", "cap-ctr", "alice")
    assert parse_containers_info(capture("ctr_containers_info_native.json")).snapshotter == "native"


def test_a_missing_container_is_recognised_by_its_real_error() -> None:
    stderr = capture("ctr_containers_info_missing.stderr").lower()
    assert Containerd.not_found_text in stderr
    assert Podman.not_found_text not in stderr


def test_parse_real_mounts_tasks_and_images() -> None:
    options = parse_snapshot_mounts(capture("ctr_snapshots_mounts_overlayfs.txt"))
    assert options["upperdir"] == UPPER and options["lowerdir"].endswith("/snapshots/1/fs")
    assert parse_task_status(capture("ctr_tasks_ls.txt"), "cap-ctr") == "RUNNING"
    assert parse_task_status(capture("ctr_tasks_ls_paused.txt"), "cap-ctr") == "PAUSED"
    assert parse_task_status(capture("ctr_tasks_ls_paused.txt"), "cap-native") == "RUNNING"
    assert parse_task_status(capture("ctr_tasks_ls_stopped.txt"), "cap-ctr") == "STOPPED"
    assert parse_task_status(capture("ctr_tasks_ls.txt"), "cap") == ""
    row = parse_images_ls(capture("ctr_images_ls.txt"), "localhost/imgsave-base:latest")
    assert row is not None and row.digest == MANIFEST
    assert row.media_type == "application/vnd.oci.image.manifest.v1+json"
    assert parse_images_ls(capture("ctr_images_ls.txt"), "localhost/other:latest") is None
    # the task's rootfs mount is the kernel's overlay with that upper dir: streamable
    check_overlay_mount(UPPER, capture("ctr_mountinfo_task_rootfs.txt"))


def test_the_overlay_snapshot_is_found_through_ctr() -> None:
    ctr = Containerd(command=("ctr",))
    found = ctr.overlay_container("cap-ctr", replay())
    assert found.upper_dir == UPPER and found.running and not found.paused
    assert found.image_name == "localhost/imgsave-base:latest" and found.id == "cap-ctr"
    paused = ctr.overlay_container("cap-ctr", replay(tasks="ctr_tasks_ls_paused.txt"))
    assert paused.paused and not paused.running


def test_another_snapshotter_is_refused_with_its_name_before_anything_runs() -> None:
    runner = Replay({(*CTR, "containers", "info", "cap-ctr"):
                     capture("ctr_containers_info_native.json")})
    with pytest.raises(StreamingUnavailable, match="snapshotter is native, not overlayfs"):
        Containerd(command=("ctr",)).overlay_container("cap-ctr", runner)
    assert runner.calls == [[*CTR, "containers", "info", "cap-ctr"]]  # nothing paused


def content_store(root: Path) -> Path:
    """A containerd content store holding the real captured manifest and config."""
    blobs = root / CONTENT_DIR
    blobs.mkdir(parents=True)
    for digest, name in ((MANIFEST, "ctr_content_get_manifest.json"),
                         (CONFIG, "ctr_content_get_config.json")):
        data = (CAPTURES / name).read_bytes()
        assert "sha256:" + hashlib.sha256(data).hexdigest() == digest  # the real bytes
        (blobs / digest.removeprefix("sha256:")).write_bytes(data)
    return root


def test_the_base_image_comes_from_the_content_store(tmp_path: Path) -> None:
    ctr = Containerd(command=("ctr",), root=str(content_store(tmp_path)))
    found = ctr.overlay_container("cap-ctr", replay())
    image = ctr.local_image(found, replay(images="localhost/imgsave-base:latest"))
    assert image.id == CONFIG.removeprefix("sha256:")
    assert image.diff_ids == (
        "sha256:14fad2c6af5b76b2859c2bd1a26fff7b3b01f386d04d03a2c6ed6f8474826704",)
    assert image.size == 1084142  # the compressed layer: containerd keeps no unpacked size
    # a candidate only on the registry of that name (base_image.candidates)
    assert image.repo_digests == (f"localhost/imgsave-base@{MANIFEST}",)
    assert repo_digest("127.0.0.1:5000/library/imgsave-base:latest", MANIFEST) == (
        f"127.0.0.1:5000/library/imgsave-base@{MANIFEST}")
    shutil.rmtree(tmp_path / CONTENT_DIR)
    with pytest.raises(Exception, match="not in containerd's content store"):
        ctr.local_image(found, replay(images="localhost/imgsave-base:latest"))


def test_an_index_picks_this_platforms_manifest() -> None:
    index = {"manifests": [
        {"digest": "sha256:" + "a" * 64, "platform": {"architecture": "arm64", "os": "linux"}},
        {"digest": "sha256:" + "b" * 64, "platform": {"architecture": "amd64", "os": "linux"}},
    ]}
    assert platform_manifest(index, "amd64") == "sha256:" + "b" * 64
    with pytest.raises(Exception, match="no linux/s390x"):
        platform_manifest(index, "s390x")


def test_engines_per_node_in_order() -> None:
    section = EngineSection(
        kind=EngineKind.PODMAN, command=["podman"],
        others=[EngineRuntime(kind=EngineKind.CONTAINERD, command=["ctr"], nodes=["gpu*"]),
                EngineRuntime(kind=EngineKind.DOCKER, command=["docker"], nodes=["n[12]"])],
    )
    assert [e.kind for e in engines_on(section, "n1")] == ["podman", "docker"]
    assert [e.kind for e in engines_on(section, "gpu07")] == ["podman", "containerd"]
    assert [e.kind for e in engines_on(section, "n3")] == ["podman"]
    only_gpu = EngineSection(kind=EngineKind.CONTAINERD, command=["ctr"], nodes=["gpu*"])
    assert engines_on(only_gpu, "n1") == []
    ctr = engine_for(only_gpu)
    assert isinstance(ctr, Containerd) and ctr.namespace == "k8s.io"
    assert ctr.root == "/var/lib/containerd"
    with pytest.raises(ConfigError, match="only containerd reads its root"):
        runtime_engine(EngineRuntime(kind=EngineKind.DOCKER, command=["docker"], root="/x"),
                       True)


def test_the_guard_records_ctrs_resume_before_its_pause(tmp_path: Path) -> None:
    guard = JobGuard(record_path(tmp_path, "77"), "b" * 32)
    guard.write()
    ctr, docker = Containerd(command=("ctr",)), Docker(command=("docker",))
    seen: list[list[str]] = []

    def runner(argv: Sequence[str], **kwargs: object) -> CommandResult:
        on_disk = JobGuard.load(guard.path)
        seen.append(on_disk.unpause if on_disk else [])
        if argv[-1] == "fails":
            raise CommandFailed(list(argv), 1, "", "boom")
        return CommandResult(tuple(argv), 0, "", "")

    guarded = GuardedRunner(runner, guard, ["podman"], engines=[Podman(command=("podman",)),
                                                                ctr, docker])
    guarded(ctr.pause("c1"))
    assert seen[-1] == ctr.resume("c1")  # on record while the pause runs
    guarded(ctr.resume("c1"))
    assert JobGuard.load(guard.path).unpause == []  # type: ignore[union-attr]
    guarded(docker.commit("d1", "img"))  # docker's commit --pause=true, docker's undo
    assert seen[-1] == ["docker", "unpause", "d1"]


class Node:
    """A node's engines as a runner: podman has no such container, docker is down,
    containerd holds it (its real outputs)."""

    def __init__(self, owner: str = "alice") -> None:
        self.info = capture("ctr_containers_info_running.json").replace(
            '"imgsave.owner": "alice"', f'"imgsave.owner": "{owner}"')

    def __call__(self, argv: Sequence[str], **kwargs: object) -> CommandResult:
        if argv[0] == "podman":
            raise CommandFailed(list(argv), 125, "[]", capture(
                "podman_container_inspect_missing.stderr"))
        if argv[0] == "docker":
            raise CommandFailed(list(argv), 1, "", "Cannot connect to the Docker daemon at "
                                "unix:///run/docker/docker.sock. Is the docker daemon running?")
        if argv[-1] == "cap-ctr":
            return CommandResult(tuple(argv), 0, self.info, "")
        raise CommandFailed(list(argv), 1, "", capture("ctr_containers_info_missing.stderr"))


def node_run(tmp_path: Path, container: str, runner: Node, user: str = "alice") -> SaveRun:
    text = (TOP / "site_configs" / "local.toml").read_text()
    (tmp_path / "site.toml").write_text(text)
    spec = SaveSpec(request_id="c" * 32, user=user, container=container,
                    target=f"127.0.0.1:5000/{user}/x:v1", formats=(ImageFormat.OCI,),
                    category="cpu", node="n1", site_config=str(tmp_path / "site.toml"),
                    created="2026-11-30T06:00:00+00:00")
    return SaveRun(spec=spec, site=load_site_config(tmp_path / "site.toml"),
                   events=EventLog(tmp_path / "events.jsonl"), runner=runner, env={})


def test_the_node_finds_the_container_in_whichever_engine_holds_it(tmp_path: Path) -> None:
    run = node_run(tmp_path, "cap-ctr", Node())
    assert [e.kind for e in run.engines] == ["podman", "containerd", "docker"]
    info = locate(run)
    assert info.id == "cap-ctr" and isinstance(run.engine, Containerd)


def test_another_users_container_in_any_engine_is_refused(tmp_path: Path) -> None:
    with pytest.raises(SaveFailed) as refused:
        locate(node_run(tmp_path, "cap-ctr", Node(owner="alice"), user="bob"))
    assert refused.value.kind is FailureKind.NOT_OWNER and "alice" not in refused.value.message


def test_a_container_in_no_engine_is_not_found_even_with_a_daemon_down(tmp_path: Path) -> None:
    with pytest.raises(SaveFailed) as missing:
        locate(node_run(tmp_path, "nosuch", Node()))
    assert missing.value.kind is FailureKind.CONTAINER_NOT_FOUND
    assert missing.value.message == "container nosuch not found on n1"


def test_the_containers_env_cwd_user_and_labels_go_to_the_saved_config_by_the_one_rule() -> None:
    """From the real ``ctr containers info``: what the OCI spec says of the process; the
    args (Entrypoint and Cmd run together) are left to the image (not reported)."""
    from builder_jobs.engine_containerd import Containerd
    from builder_jobs.image_config import ConfigRule, saved_config

    info = Containerd(("ctr",)).parse_container(capture("ctr_containers_info_running.json"))
    assert info.config.env == ("PATH=/bin",) and info.config.working_dir == "/"
    assert info.config.user == "0:0" and info.config.labels["imgsave.owner"] == "alice"
    base = {"config": {"Cmd": ["/bin/sh"], "Env": ["PATH=/usr/bin"], "Labels": {"a": "b"}}}
    saved = saved_config(base, info.config, ConfigRule()).config["config"]
    assert saved["Cmd"] == ["/bin/sh"]  # the image's own
    assert saved["Env"] == ["PATH=/bin"] and saved["WorkingDir"] == "/"
    assert "imgsave.owner" not in saved.get("Labels", {})
