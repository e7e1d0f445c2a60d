"""``imgsave warmup`` and ``imgsave warmup-status``: put saved images on nodes ahead of
the jobs that will use them (docs/warmup.md)."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import click

from api.cli.commands import Context, reports_errors
from api.service.warmup_plan import expand_nodes, parse_plan, same_images
from api.service.warmups import Warmup, WarmupService
from api.tables import human_bytes, render_table
from core.errors import InvalidRequest

POLL_SECONDS = 1.0


def _service(obj: Context) -> WarmupService:
    site = obj.site  # direct mode only (--api: POST /api/v1/warmups)
    return WarmupService(site.config, site.scheduler)


@click.command()
@click.argument("images", nargs=-1)
@click.option("--nodes", default=None, metavar="HOSTLIST",
              help="Nodes in Slurm hostlist syntax, e.g. 'n[1-4],gpu01'.")
@click.option("--job", "job_id", default=None, metavar="JOBID",
              help="The nodes of your pending or running job.")
@click.option("--plan", "plan_file", default=None, type=click.Path(dir_okay=False, exists=True),
              help="A TOML plan: [[warmup]] tables of nodes and images (docs/warmup.md).")
@click.option("--wait", is_flag=True, help="Follow until every node has finished.")
@click.option("--timeout", default=3600.0, show_default=True, help="Seconds --wait waits.")
@click.pass_obj
@reports_errors
def warmup(obj: Context, images: tuple[str, ...], nodes: str | None, job_id: str | None,
           plan_file: str | None, wait: bool, timeout: float) -> None:
    """Pull your saved IMAGES onto nodes now, one job per node, so jobs start fast.

    Give the nodes with exactly one of --nodes, --job or --plan (which names images
    per node, so no IMAGES then). Prints the warm-up id; follow it with
    `imgsave warmup-status ID --wait`.
    """
    given = [x for x in (nodes, job_id, plan_file) if x]
    if len(given) != 1:
        raise click.UsageError("give exactly one of --nodes, --job or --plan")
    service = _service(obj)
    if plan_file:
        if images:
            raise click.UsageError("--plan names the images; give no IMAGE arguments with it")
        plan = parse_plan(Path(plan_file).read_text())
    elif nodes:
        plan = same_images(expand_nodes(nodes), images)
    else:
        plan = same_images(service.nodes_of_job(str(job_id), obj.user, admin=obj.admin),
                           images)  # fmt: skip
    started = service.submit(obj.user, plan)
    if not obj.as_json:
        click.echo(f"Submitted warm-up {started.warmup_id} "
                   f"({len(started.nodes)} node{'s' if len(started.nodes) != 1 else ''})")
    _show(obj, service, started, wait, timeout)


@click.command("warmup-status")
@click.argument("warmup_id")
@click.option("--wait", is_flag=True, help="Follow until every node has finished.")
@click.option("--timeout", default=3600.0, show_default=True, help="Seconds --wait waits.")
@click.pass_obj
@reports_errors
def warmup_status(obj: Context, warmup_id: str, wait: bool, timeout: float) -> None:
    """Per-node progress of a warm-up: state, images done, and per image pulled,
    already present or failed (and why), bytes and seconds."""
    service = _service(obj)
    _show(obj, service, service.status(warmup_id, obj.user, admin=obj.admin), wait, timeout)


def _show(obj: Context, service: WarmupService, current: Warmup, wait: bool,
          timeout: float) -> None:
    if wait:
        deadline = time.monotonic() + timeout
        while not current.finished:
            if time.monotonic() > deadline:
                raise InvalidRequest(f"warm-up {current.warmup_id} still running after "
                                     f"{timeout:.0f} s", retryable=True)  # fmt: skip
            time.sleep(POLL_SECONDS)
            current = service.status(current.warmup_id, obj.user, admin=obj.admin)
    obj.emit(current.to_dict(), lambda: warmup_table(current))
    if wait and not current.ok:
        for node in current.nodes:
            if not node.ok:
                click.echo(f"imgsave: error: warm-up {current.warmup_id}: node {node.node}: "
                           f"{node.error or _failures(node.images) or node.state.label}",
                           err=True)  # fmt: skip
        sys.exit(1)


def _failures(images: list) -> str:  # type: ignore[type-arg]
    return "; ".join(f"{i.image}: {i.error}" for i in images if i.error)


def warmup_table(current: Warmup) -> str:
    """One row per node and image: the per-node result table."""
    rows: list[list[object]] = []
    for node in current.nodes:
        done = f"{len(node.images)}/{node.images_total}"
        if not node.images:
            rows.append([node.node, node.job_id, node.state.label.upper(), done, "", "", "", "",
                         node.error])
        for image in node.images:
            rows.append([node.node, node.job_id, node.state.label.upper(), done, image.image,
                         image.outcome.value, human_bytes(image.bytes), f"{image.seconds:.1f}",
                         image.error])
    return render_table(["NODE", "JOBID", "STATE", "IMAGES", "IMAGE", "RESULT", "BYTES",
                         "SECONDS", "REASON"], rows)  # fmt: skip
