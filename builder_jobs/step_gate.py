"""The privileged entry's checks for a save run as a step of its owner's own job.

A step (``srun --jobid J --overlap``, ``imgsave submit --job J --in-job``) has no
comment of its own: what the scheduler records is the step's id, its owner (the job's),
its node and its name, ``imgsave-save-USER-REQUEST``, which binds it to one request of
that owner. The request itself is the spec in the owner's own spool, read here with the
owner's own credentials (:func:`builder_jobs.user_files.read_as_user`: root opens no
path a user arranges). It is worth exactly what the batch route's ``--comment`` is
worth, which the same user writes: it can ask only for that user's own containers, in
that user's own namespace, once (:func:`builder_jobs.node_gate.claim_once`).

So a step is admitted only if the scheduler says it runs now, its job is the caller's
(``node_gate.spec_from_job``), it runs on the node the spec names, and the spec in the
owner's spool is the request its name gives, for that owner.
"""

from __future__ import annotations

from collections.abc import Mapping

from builder_jobs.failures import SaveFailed
from builder_jobs.node_gate import Refused
from builder_jobs.spec import SPEC_FILE, SaveSpec, spool_dir_for
from builder_jobs.user_files import read_as_user
from core.errors import ImgsaveError
from site_configs.schema import SiteConfig


def is_step(job_id: str) -> bool:
    """Whether ``job_id`` names a numbered step (``123.4``), not a job."""
    _, dot, step = job_id.partition(".")
    return bool(dot) and step.isdigit()


def step_request(config: SiteConfig, step_id: str, owner: str, node: str,
                 recorded: Mapping[str, str]) -> dict[str, str]:
    """The metadata of step ``step_id`` of ``owner``'s job running on ``node``, as the
    batch route's comment would give it: the request its name binds (``recorded``),
    read from the owner's spool. Refused if anything disagrees."""
    request_id = recorded.get("request_id", "")
    if not request_id:
        raise Refused(f"step {step_id} is not an imgsave save step")
    try:
        path = spool_dir_for(config.spool_for(owner), request_id) / SPEC_FILE
        spec = SaveSpec.from_json(read_as_user(path, owner).decode(errors="replace"))
    except (SaveFailed, ImgsaveError) as e:
        raise Refused(f"step {step_id}: cannot read its request from your spool: "
                      f"{e.message}") from e  # fmt: skip
    if spec.request_id != request_id or spec.user != owner:
        raise Refused(f"step {step_id}: the spec in your spool is not request {request_id} "
                      "of yours")  # fmt: skip
    if spec.node != node:
        raise Refused(f"step {step_id} runs on {node or 'no node'}, but request {request_id} "
                      f"is for {spec.node}")  # fmt: skip
    return {
        "request_id": request_id, "user": owner, "container": spec.container,
        "target": spec.target, "formats": ",".join(f.value for f in spec.formats),
        "category": spec.category, "node": spec.node, "full": "1" if spec.full else "",
    }  # fmt: skip
