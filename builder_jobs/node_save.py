"""The node-side entry point of a save: ``python -m builder_jobs.node_save SPEC_PATH``.

Run by the batch job on the node that hosts the container. Stages, each recorded in
``events.jsonl`` beside the spec: LOCATING (find the container, check its owner label,
check the target and that the registry answers), COMMITTING (engine commit to a local
tag unique to the request), PUSHING (engine push, then OCI annotations), SIF stages if
asked (see :mod:`builder_jobs.sif`), then DONE (result written first, the local
temporary tag removed after) or CLEANING and FAILED. ``result.json`` holds the outcome.
Exit status 0 on success; otherwise 1 with the reason as one line on stderr (2 when
the spec itself cannot be read).

A full filesystem on the node fails the save like any other error, but as
:attr:`FailureKind.NO_SPACE` naming the filesystem (:mod:`builder_jobs.no_space`).
"""

from __future__ import annotations

import argparse
import grp
import json
import logging
import pwd
import signal
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

from builder_jobs import cancel, sif
from builder_jobs.annotations import SaveProvenance
from builder_jobs.engine_containerd import EngineCannot
from builder_jobs.engines import (
    ContainerInfo,
    parse_image_size,
    parse_repo_digest,
)
from builder_jobs.events import (
    EventLog,
    FailureKind,
    ProgressEvent,
    SaveResult,
    Stage,
    write_result,
)
from builder_jobs.failures import SaveFailed, engine_failure, registry_failure
from builder_jobs.image_config import ConfigRule, image_env, saved_config
from builder_jobs.no_space import full_path, no_space, remove_engine_leftover
from builder_jobs.oci_save import PushedImage, RegistryTarget
from builder_jobs.run import SaveRun
from builder_jobs.spec import EVENTS_FILE, RESULT_FILE, SaveSpec
from builder_jobs.streaming.commit import StreamResult
from builder_jobs.streaming.save import STREAMING_METHOD, try_streaming
from core.errors import CommandFailed, ImgsaveError
from registry.auth import load_credentials
from registry.oci import RegistryClient
from registry.refs import ImageRef, target_for_user
from site_configs.schema import ImageFormat, load_site_config

log = logging.getLogger("builder_jobs.node_save")

COMMIT_METHOD = "engine-commit"
INSPECT_TIMEOUT_SECONDS = 60.0


def locate(run: SaveRun) -> ContainerInfo:
    """Find the container on this node and check that it belongs to the spec's user.

    Each engine the site config gives this node is asked in turn; the first holding a
    container of that name labelled as the user's becomes ``run.engine``. An engine
    that does not answer is passed over (and logged if the container is found nowhere)."""
    spec, label = run.spec, run.site.engine.owner_label
    failures: list[CommandFailed] = []
    others = False
    for engine in run.engines:
        try:
            out = run.runner(engine.inspect_container(spec.container),
                             timeout=INSPECT_TIMEOUT_SECONDS)
        except CommandFailed as e:
            if engine.not_found_text not in (e.stderr + e.stdout).lower():
                failures.append(e)
            continue
        info = engine.parse_container(out.stdout)
        if info.labels.get(label) == spec.user:
            run.engine = engine
            return info
        others = True
    if others:
        # Never say whose it is: only that it lacks the requesting user's label.
        raise SaveFailed(
            FailureKind.NOT_OWNER,
            f"container {spec.container} on {run.node} is not labelled {label}={spec.user}; "
            "only your own containers can be saved",
        )
    if failures and len(failures) == len(run.engines):
        raise engine_failure(failures[-1]) from failures[-1]  # none could look
    for failure in failures:  # a daemon down is the admins' matter: in the job's log
        log.warning("engine did not answer on %s: %s", run.node, failure)
    raise SaveFailed(
        FailureKind.CONTAINER_NOT_FOUND,
        f"container {spec.container} not found on {run.node}",
    )


def resolve_target(run: SaveRun) -> ImageRef:
    """The spec's target, re-checked on the node: site registry, user's namespace, a tag."""
    section = run.site.registry
    try:
        ref = target_for_user(
            run.spec.target,
            run.spec.user,
            section.namespace,
            section.host,
            _group_of(run.spec.user),
        )
    except ImgsaveError as e:
        raise SaveFailed(FailureKind.INVALID, f"target {run.spec.target}: {e}") from e
    return ref


def _group_of(user: str) -> str:
    try:
        return grp.getgrgid(pwd.getpwnam(user).pw_gid).gr_name
    except KeyError:
        return ""  # unknown here: a namespace rule with {group} then refuses the target


def base_digest(run: SaveRun, info: ContainerInfo) -> str:
    """The base image's manifest digest, if the engine knows one ("" otherwise)."""
    if info.image_digest:
        return info.image_digest
    image = info.image_id or info.image
    if not image:
        return ""
    try:
        out = run.runner(run.engine.inspect_image(image), timeout=INSPECT_TIMEOUT_SECONDS)
        return parse_repo_digest(out.stdout) or ""
    except ImgsaveError:
        return ""  # an annotation, not worth failing the save for


def commit(run: SaveRun, info: ContainerInfo) -> None:
    """Commit the container (by id: the one whose owner was checked) to the temp tag,
    and refuse an image over the site's size limit before anything is pushed."""
    argv = run.engine.commit(info.id, run.temp_image, clear_labels=[run.site.engine.owner_label])
    run.local_images = [run.temp_image]  # (an engine without a commit raised above)
    run.run(argv, run.site.engine.commit_timeout_seconds)
    size = parse_image_size(
        run.run(run.engine.inspect_image(run.temp_image), INSPECT_TIMEOUT_SECONDS)
    )
    limit = run.site.limits.max_image_bytes
    if size > limit:
        raise SaveFailed(
            FailureKind.SIZE_LIMIT,
            f"the image of {info.name} is {size} bytes, over this site's limit of {limit}",
        )


def push(run: SaveRun, target: RegistryTarget, info: ContainerInfo) -> PushedImage:
    """Engine push to the tag, then annotations (the caller rolls back on failure)."""
    engine, ref = run.engine, str(target.ref)
    authfile = run.site.registry.credentials_file
    run.local_images = engine.local_names_after_push(run.temp_image, ref)
    target.began = True
    for argv in engine.push(run.temp_image, ref, authfile=authfile):
        try:
            run.runner(argv, timeout=run.site.engine.commit_timeout_seconds)
        except CommandFailed as e:
            pushing = argv[len(engine.base)] == "push"
            raise (registry_failure(e, ref) if pushing else engine_failure(e)) from e
    rule, base_env = ConfigRule.from_site(run.site), base_image_env(run, info)
    try:
        return target.annotate(
            provenance(run, info).annotations(),
            config=lambda pushed: saved_config(pushed, info.config, rule, base_env),
        )
    except ImgsaveError as e:
        raise registry_failure(e, ref) from e


def base_image_env(run: SaveRun, info: ContainerInfo) -> tuple[str, ...]:
    """The base image's ``Env`` from the engine (the image config rule keeps HOME and
    HOSTNAME only where the base sets them)."""
    image = info.image_id or info.image
    if not image:
        return ()
    try:
        out = run.runner(run.engine.inspect_image(image), timeout=INSPECT_TIMEOUT_SECONDS)
        found = json.loads(out.stdout)
    except (ImgsaveError, ValueError) as e:  # HOME/HOSTNAME are then left out: not worth failing
        log.warning("could not read the base image's env (%s): %s", image, e)
        return ()
    obj = found[0] if isinstance(found, list) and found else found
    return image_env(obj) if isinstance(obj, dict) else ()


def provenance(run: SaveRun, info: ContainerInfo) -> SaveProvenance:
    """Where the image came from: the annotations every saved manifest carries."""
    return SaveProvenance(
        created=datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        node=run.node,
        job_id=run.job_id,
        owner=run.spec.user,
        category=run.spec.category,
        request_id=run.spec.request_id,
        base_name=info.image,
        base_digest=base_digest(run, info),
    )


def commit_and_push(run: SaveRun, target: RegistryTarget, info: ContainerInfo
                    ) -> tuple[PushedImage, str, str, StreamResult | None]:
    """The OCI image in the registry: streamed where possible, else the engine's commit
    and push. Returns the image, the method used, why streaming was not, and the
    streaming commit's own result (its chain) when it ran."""
    annotations = provenance(run, info).annotations()
    pushed, why_not, streamed = try_streaming(run, target, info, annotations)
    if pushed is not None:
        return pushed, STREAMING_METHOD, "", streamed
    with run.stage(Stage.COMMITTING, f"committing {info.name}"):
        try:
            commit(run, info)
        except EngineCannot as e:  # containerd: streaming is its only way
            raise SaveFailed(FailureKind.ENGINE, f"{e.message}; here: {why_not}") from e
    with run.stage(Stage.PUSHING, f"pushing {target.ref}"):
        return push(run, target, info), COMMIT_METHOD, why_not, None


def open_targets(
    run: SaveRun, ref: ImageRef, want_oci: bool, want_sif: bool
) -> list[RegistryTarget]:
    """The registry tags this save writes (OCI, ORAS), each snapshotted for rollback."""
    try:
        credentials = load_credentials(run.site.registry)
    except ImgsaveError as e:
        raise SaveFailed(FailureKind.INVALID, f"registry credentials: {e.message}") from e
    client = RegistryClient.from_section(run.site.registry, credentials)
    refs = [ref] if want_oci else []
    if want_sif and run.site.sif.push_oras:
        refs.append(sif.oras_ref(ref, alongside_oci=want_oci))
    targets = [RegistryTarget(client, r) for r in refs]
    for target in targets:
        try:
            target.snapshot()
        except ImgsaveError as e:
            raise registry_failure(e, str(target.ref)) from e
    return targets


def cleanup(run: SaveRun) -> str:
    """Remove the local temporary names; returns a warning ("" if all went)."""
    if not run.local_images:
        return ""
    result = run.runner(
        run.engine.rmi(run.local_images), timeout=INSPECT_TIMEOUT_SECONDS, check=False
    )
    text = (result.stderr + result.stdout).lower()
    if result.returncode != 0 and "image not known" not in text and "no such image" not in text:
        return f"could not remove {', '.join(run.local_images)}: {result.stderr.strip()[-200:]}"
    return ""


def save(run: SaveRun) -> SaveResult:
    """Every stage of one save; always cleans up; reports the result to ``run.events``
    (once, as soon as it is known) and returns it (never raises)."""
    want_oci = ImageFormat.OCI in run.spec.formats
    want_sif = ImageFormat.SIF in run.spec.formats
    pushed: PushedImage | None = None
    method, why_not = "", ""
    streamed: StreamResult | None = None
    sif_out = sif.SifOutput()
    targets: list[RegistryTarget] = []
    try:
        with run.stage(Stage.LOCATING, f"looking for {run.spec.container} on {run.node}"):
            info = locate(run)
            if run.located is not None:
                run.located(info)
            run.target_ref = ref = resolve_target(run)
            targets = open_targets(run, ref, want_oci, want_sif)
        if want_oci:
            pushed, method, why_not, streamed = commit_and_push(run, targets[0], info)
            if pushed.dropped_env:
                run.emit(Stage.PUSHING, "left out of the image's config (secret-looking "
                         f"names): {', '.join(pushed.dropped_env)}")
            size = pushed.image_bytes
            run.emit(Stage.PUSHING, f"pushed {ref}@{pushed.digest}", size, size)
        if want_sif:
            oras = targets[-1] if run.site.sif.push_oras else None
            sif_out = sif.save_sif(run, info, oras)
    except BaseException as e:
        failure = no_space(run.node, e) or (e if isinstance(e, SaveFailed) else _unexpected(e))
        if failure.kind is FailureKind.NO_SPACE:
            remove_engine_leftover(full_path(e) or "")
        for target in targets:
            if target.began:
                target.rollback()  # a failed save leaves no tag it wrote
        return _failed(run, failure)
    result = SaveResult(
        ok=True,
        reference=str(ref) if pushed else sif_out.reference,
        digest=pushed.digest if pushed else "",
        size_bytes=pushed.new_bytes if pushed else sif_out.size_bytes,
        image_bytes=pushed.image_bytes if pushed else sif_out.size_bytes,
        sif_path=sif_out.path,
        sif_digest=sif_out.digest,
        commit_method=method if pushed else sif.SIF_METHOD,
        commit_note=why_not if pushed else "",
        dropped_env=list(pushed.dropped_env) if pushed else [],
        seconds=dict(run.seconds),
        incremental=bool(streamed and streamed.incremental),
        chain_layers=streamed.chain_layers if streamed else 0,
        full_reason=_full_reason(streamed),
        bytes_pushed=streamed.bytes_pushed if streamed else 0,
    )
    # The image is in the registry and usable: say so before the local housekeeping
    # (removing the temporary image can take seconds on a busy node).
    run.events.finish(result)
    run.emit(Stage.DONE, "saved")
    warning = cleanup(run)
    if warning:
        log.warning("%s", warning)
    return result


def _full_reason(streamed: StreamResult | None) -> str:
    if streamed is None:
        return ""
    return "; ".join(n for n in (streamed.full_reason, streamed.record_note) if n)


def _failed(run: SaveRun, failure: SaveFailed) -> SaveResult:
    with run.stage(Stage.CLEANING, "removing local temporary images"):
        warning = cleanup(run)
    message = failure.message + (f" (also: {warning})" if warning else "")
    run.emit(Stage.FAILED, message)
    result = SaveResult(
        ok=False,
        reference=run.spec.target,
        seconds=dict(run.seconds),
        failure=failure.kind,
        error=message,
    )
    run.events.finish(result)
    return result


def _unexpected(error: BaseException) -> SaveFailed:
    if isinstance(error, ImgsaveError):
        return SaveFailed(FailureKind.INTERNAL, error.message, retryable=error.retryable)
    log.exception("unexpected error")
    return SaveFailed(FailureKind.INTERNAL, f"internal error: {type(error).__name__}: {error}")


def main(argv: Sequence[str] | None = None) -> int:
    """Load the spec and site config, run the save, write ``result.json``.

    The save without a scheduler, for the centre's admins and the node-side tests: it
    runs as whoever starts it and trusts the spec it is given. Users never reach it:
    their jobs enter through the privileged entry (:mod:`builder_jobs.node_gate`), which
    builds the spec from the scheduler's record of the job, not from a file."""
    parser = argparse.ArgumentParser(prog="python -m builder_jobs.node_save")
    parser.add_argument("spec_path", type=Path, help="the save's spec.json in the spool")
    args = parser.parse_args(argv)
    logging.basicConfig(stream=sys.stdout, level=logging.INFO, format="%(levelname)s %(message)s")
    spec_path: Path = args.spec_path.resolve()
    spool = spec_path.parent
    try:
        spec = SaveSpec.from_json(spec_path.read_text())
        site = load_site_config(spec.site_config)
        run = SaveRun(spec=spec, site=site, events=EventLog(spool / EVENTS_FILE))
    except (OSError, ImgsaveError) as e:
        message = f"cannot start the save from {spec_path}: {e}"
        if spool.is_dir():
            EventLog(spool / EVENTS_FILE).emit(ProgressEvent(Stage.FAILED, message=message))
            write_result(
                spool / RESULT_FILE,
                SaveResult(ok=False, failure=FailureKind.INVALID, error=message),
            )
        print(_one_line(message), file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, cancel.on_signal)  # scancel/qdel: clean up, then fail
    return report_exit(save(run))


def report_exit(result: SaveResult) -> int:
    """The job's exit status for ``result``, its one line printed (stdout or stderr)."""
    if not result.ok:
        print(_one_line(result.error), file=sys.stderr)
        return 1
    print(f"saved {result.reference} {result.digest}".strip())
    return 0


def _one_line(text: str) -> str:
    return " ".join(text.split())


if __name__ == "__main__":
    sys.exit(main())
