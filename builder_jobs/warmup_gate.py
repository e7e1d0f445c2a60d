"""The privileged entry's warm-up: ``imgsave-node-save JOBID REQUEST_ID`` for a warm-up job.

The node's one privileged entry (:mod:`builder_jobs.node_gate`) serves saves; a job
whose scheduler record carries ``kind=warmup`` in its metadata is a warm-up, and
:func:`dispatch` hands it here instead (:mod:`api.node_entry` gives both the scheduler).
The same trust rules hold: the caller comes from ``SUDO_UID``; the job must be running,
the caller's, and submitted for this request; what to pull comes from the job's record
(metadata the service wrote), never from a file, and each image is checked again
(:func:`builder_jobs.warmup_rules.allowed_image`): a forged comment naming another
user's image or another registry fails that image, and pulls nothing.

Each image: ask the registry for the digest its tag points to; if the node's image of
that name already carries that digest, it is "already present" (no pull); else
``podman pull`` it (as root, into the node's storage, which is what users' containers
start from). Layers shared between images are fetched once per node:
podman's storage keeps each layer once and ``pull`` skips blobs it holds (checked by
tests/cluster/test_warmup_cluster.py against the registry's log). One image failing
does not stop the others. Results go to stdout as JSON lines
(:mod:`builder_jobs.warmup_spec`); the job's unprivileged half writes them to the spool.

Exit status: 0 every image is on the node, 1 some failed, 2 refused.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from builder_jobs.engine_choice import engine_for
from builder_jobs.engines import Podman
from builder_jobs.node_gate import (
    REFUSED,
    REQUEST_ID,
    JobLookup,
    JobOnRecord,
    Refused,
    caller_name,
    claim_once,
    die_with_parent,
)
from builder_jobs.node_guard import is_job_id
from builder_jobs.warmup_rules import allowed_image
from builder_jobs.warmup_spec import (
    IMAGE_SEPARATOR,
    KIND_KEY,
    KIND_WARMUP,
    MAX_IMAGES_PER_NODE,
    ImageOutcome,
    ImageResult,
    WarmupResult,
    stream_line,
)
from core.errors import ImgsaveError
from core.runner import Runner, run_command
from registry.auth import load_credentials
from registry.oci import RegistryClient
from registry.refs import ImageRef
from site_configs.schema import SiteConfig, load_site_config

log = logging.getLogger("builder_jobs.warmup_gate")

PULL_TIMEOUT_SECONDS = 3600.0
DIE_WITH_ENTRY = ("setpriv", "--pdeathsig", "KILL", "--")


def is_warmup(record: JobOnRecord) -> bool:
    return record.metadata.get(KIND_KEY) == KIND_WARMUP


def admit_warmup(record: JobOnRecord, caller: str, request_id: str) -> tuple[str, list[str]]:
    """(the user it works for, the images named in the job's record), if ``caller`` may run it."""
    job = record.job_id
    if record.owner != caller:
        raise Refused(f"job {job} is not yours")
    if not record.running:
        raise Refused(f"job {job} is {record.state}, not running")
    if record.metadata.get("request_id") != request_id:
        raise Refused(f"job {job} was not submitted for request {request_id}")
    if not record.works_for:
        raise Refused(f"job {job} names no user it may warm up for")
    images = [i for i in record.metadata.get("images", "").split(IMAGE_SEPARATOR) if i]
    if not images or len(images) > MAX_IMAGES_PER_NODE:
        raise Refused(f"job {job} names no images (or more than {MAX_IMAGES_PER_NODE})")
    return record.works_for, images


class NodeImages:
    """The node's podman storage, asked and filled through the one runner."""

    def __init__(self, engine: Podman, runner: Runner, authfile: str = "") -> None:
        self.engine = engine
        self.runner = runner
        self.authfile = authfile

    def held_digests(self, ref: ImageRef) -> set[str]:
        """Manifest digests of the image ``ref`` names on this node (its ``RepoDigests``
        in ``ref``'s repository); empty when the node has no image of that name. The
        name, not just the repository: a tag the node holds pointing at an older image
        must be pulled again, or ``podman run`` of it would start the old one."""
        result = self.runner(self.engine.inspect_image(str(ref)), timeout=120, check=False)
        if result.returncode != 0:
            return set()
        return held_digests(result.stdout, f"{ref.registry}/{ref.repository}")

    def pull(self, ref: ImageRef) -> None:
        argv = [*DIE_WITH_ENTRY, *self.engine.base, "pull", "--quiet"]
        if self.authfile:
            argv += ["--authfile", self.authfile]
        if not self.engine.tls_verify:
            argv.append("--tls-verify=false")
        self.runner([*argv, str(ref)], timeout=PULL_TIMEOUT_SECONDS, check=True)


def held_digests(images_json: str, repository: str) -> set[str]:
    """Digests for ``repository`` in ``podman image inspect`` (or ``images --format
    json``) output: both are JSON arrays of objects with ``RepoDigests``."""
    try:
        rows = json.loads(images_json or "[]")
    except ValueError:
        return set()
    found: set[str] = set()
    for row in rows if isinstance(rows, list) else []:
        for entry in row.get("RepoDigests") or []:
            name, _, digest = str(entry).partition("@")
            if name == repository and digest:
                found.add(digest)
    return found


def warm_one(text: str, user: str, config: SiteConfig, client: RegistryClient,
             node: NodeImages) -> ImageResult:
    """Put one image on this node; any failure is this image's only."""
    started = time.monotonic()

    def failed(why: str, digest: str = "") -> ImageResult:
        return ImageResult(text, ImageOutcome.FAILED, digest=digest, error=why,
                           seconds=round(time.monotonic() - started, 3))

    try:
        ref = allowed_image(config, user, text)
    except ImgsaveError as e:
        return failed(f"refused: {e.message}")
    try:
        info = client.manifest(ref.repository, ref.reference, with_config=False)
    except ImgsaveError as e:
        return failed(f"the registry cannot say what {ref.name} is: {e.message}")
    if info is None:
        return failed(f"{ref.name} is not in the registry")
    size = info.config_size + sum(layer.size for layer in info.layers)
    if info.digest in node.held_digests(ref):
        return ImageResult(str(ref), ImageOutcome.PRESENT, info.digest, size,
                           round(time.monotonic() - started, 3))
    try:
        node.pull(ref)
    except ImgsaveError as e:
        return failed(f"podman pull failed: {e.message}", info.digest)
    return ImageResult(str(ref), ImageOutcome.PULLED, info.digest, size,
                       round(time.monotonic() - started, 3))


def run_warmup(config: SiteConfig, user: str, images: Sequence[str], node_name: str,
               emit: Callable[[str], None], runner: Runner = run_command) -> WarmupResult:
    """Warm every image on this node, reporting each as it ends; the whole result."""
    engine = engine_for(config.engine)
    if not isinstance(engine, Podman):
        why = f"warm-ups use podman; this site's engine is {config.engine.kind}"
        results = [ImageResult(i, ImageOutcome.FAILED, error=why) for i in images]
    else:
        node = NodeImages(engine, runner, config.registry.credentials_file)
        results = []
        with RegistryClient.from_section(config.registry,
                                         load_credentials(config.registry)) as client:
            for text in images:
                result = warm_one(text, user, config, client, node)
                emit(stream_line("warmup_image", result.to_dict()))
                results.append(result)
    ok = all(r.outcome is not ImageOutcome.FAILED for r in results)
    return WarmupResult(ok=ok, node=node_name, images=results)


def warmup_main(args: Sequence[str], record: JobOnRecord, config: SiteConfig) -> int:
    """Admit and run a warm-up for ``args`` = (JOBID, REQUEST_ID), job ``record``."""
    job_id, request_id = args

    def out(line: str) -> None:
        print(line, flush=True)

    try:
        user, images = admit_warmup(record, caller_name(os.environ), request_id)
        claim_once(Path(config.node.state_dir), request_id)
    except (Refused, OSError) as e:
        message = f"refused: {e}"
        refused = WarmupResult(ok=False, node=record.node, error=message)
        out(stream_line("warmup_result", json.loads(refused.to_json())))
        print(f"imgsave-node-save: {message}", file=sys.stderr)
        return REFUSED
    log.info("job %s: warming %d image(s) for %s", job_id, len(images), user)
    result = run_warmup(config, user, images, record.node.split(",", 1)[0], out)
    out(stream_line("warmup_result", json.loads(result.to_json())))
    return 0 if result.ok else 1


def dispatch(argv: Sequence[str] | None, lookup_for: Callable[[SiteConfig], JobLookup],
             save_main: Callable[[Sequence[str] | None, Callable[[SiteConfig], JobLookup]], int]
             ) -> int:
    """The node entry: a warm-up job's request runs here, anything else is a save
    (``save_main``, which makes every check of its own). The job's record is asked once."""
    args = list(sys.argv[1:] if argv is None else argv)
    if os.geteuid() != 0 or len(args) != 3 or not is_job_id(args[1]) \
            or not REQUEST_ID.fullmatch(args[2]):
        return save_main(args, lookup_for)
    try:
        config = load_site_config(args[0])
        lookup = lookup_for(config)
        record = lookup(args[1])
    except (Refused, ImgsaveError, OSError):
        return save_main(args, lookup_for)  # it says why, the usual way
    if not is_warmup(record):
        def known(job_id: str) -> JobOnRecord:
            return record if job_id == args[1] else lookup(job_id)

        return save_main(args, lambda _config: known)
    logging.basicConfig(stream=sys.stderr, level=logging.INFO,
                        format="imgsave-node-save: %(levelname)s %(message)s")  # fmt: skip
    os.umask(0o077)
    die_with_parent()  # sudo (the job) killed outright: pull nothing more unattended
    return warmup_main(args[1:], record, config)
