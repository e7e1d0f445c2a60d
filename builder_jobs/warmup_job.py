"""The warm-up job's unprivileged half: ``python -I -m builder_jobs.warmup_job SPEC_PATH``.

As :mod:`builder_jobs.job_side` does for a save: the job runs as its owner, asks the
node's one privileged entry (``sudo -n imgsave-node-save JOBID REQUEST_ID``) to do the
warm-up, and writes what the entry reports into the owner's own spool: one line per
image in ``images.jsonl`` as each ends, then ``warmup-result.json``. Root never writes
into a user's directory.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path

from builder_jobs.events import FILE_MODE, read_spool_text
from builder_jobs.job_side import job_id_from, say
from builder_jobs.script import (
    JOB_ID_VARIABLE,
    NODE_VARIABLE,
    VARIABLE_NAME,
    make_environment,
)
from builder_jobs.warmup_spec import (
    IMAGES_FILE,
    WARMUP_RESULT_FILE,
    ImageResult,
    WarmupResult,
    WarmupSpec,
    parse_warmup_line,
)
from core.errors import CommandFailed, ImgsaveError, InvalidRequest
from core.runner import run_streaming
from site_configs.schema import load_site_config

WARMUP_JOB_TEMPLATE = "warmup_job.sh.j2"
ENTRY_TIMEOUT_SECONDS = 24 * 3600.0


def render_warmup_script(spec_path: Path, python: str, request_id: str, *,
                         job_id_variable: str, node_variable: str) -> str:
    """The batch script that runs ``python -I -m builder_jobs.warmup_job SPEC`` (the
    save's script's rules: shell-quoted values, StrictUndefined, checked names)."""
    if not request_id.isalnum() or not request_id.isascii():
        raise InvalidRequest(f"bad request id {request_id!r}")
    if not python or python.startswith("-") or not spec_path.is_absolute():
        raise InvalidRequest("bad python interpreter or relative spec path")
    for name in (job_id_variable, node_variable or "_"):
        if not VARIABLE_NAME.fullmatch(name):
            raise InvalidRequest(f"bad environment variable name {name!r}")
    return make_environment().get_template(WARMUP_JOB_TEMPLATE).render(
        spec_path=str(spec_path), python=python, request_id=request_id,
        job_id_variable=job_id_variable, node_variable=node_variable,
        neutral_job_id=JOB_ID_VARIABLE, neutral_node=NODE_VARIABLE,
    )  # fmt: skip


def write_result(spool: Path, result: WarmupResult) -> None:
    """``warmup-result.json``, atomically, never through a link."""
    path = spool / WARMUP_RESULT_FILE
    tmp = path.with_suffix(".tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, FILE_MODE)
    with os.fdopen(fd, "w") as fh:
        fh.write(result.to_json())
    os.replace(tmp, path)


def append_image(spool: Path, result: ImageResult) -> None:
    import json

    fd = os.open(spool / IMAGES_FILE, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW,
                 FILE_MODE)  # fmt: skip
    try:
        os.write(fd, (json.dumps(result.to_dict(), sort_keys=True) + "\n").encode())
    finally:
        os.close(fd)


def read_warmup_result(spool: Path) -> WarmupResult | None:
    text = read_spool_text(spool / WARMUP_RESULT_FILE)
    if text is None:
        return None
    try:
        return WarmupResult.from_json(text)
    except (ValueError, KeyError, TypeError):
        return None


def read_images(spool: Path) -> list[ImageResult]:
    """The images reported so far (a torn or foreign line is skipped)."""
    import json

    rows = []
    for line in (read_spool_text(spool / IMAGES_FILE) or "").splitlines():
        try:
            rows.append(ImageResult.from_dict(json.loads(line)))
        except (ValueError, KeyError, TypeError, AttributeError):
            continue
    return rows


def run(spec_path: Path, env: Mapping[str, str]) -> int:
    started_at = time.time()
    spool = spec_path.parent
    try:
        spec = WarmupSpec.from_json(spec_path.read_text())
        site = load_site_config(spec.site_config)
    except (OSError, ImgsaveError) as e:
        return _fail(spool, f"cannot start the warm-up from {spec_path}: {e}")
    job_id = job_id_from(env)
    if not job_id:
        return _fail(spool, f"not inside a batch job: no {JOB_ID_VARIABLE}")
    final: list[WarmupResult] = []

    def line(text: str) -> None:
        item = parse_warmup_line(text)
        if isinstance(item, ImageResult):
            append_image(spool, item)
        elif isinstance(item, WarmupResult):
            final.append(item)
        elif text.strip():
            say(text)

    argv = [*site.node.privileged_command, job_id, spec.request_id]
    try:
        code = run_streaming(argv, line, timeout=ENTRY_TIMEOUT_SECONDS)
    except CommandFailed as e:
        return _fail(spool, f"the node's privileged entry {argv[0]} could not run: {e}")
    if not final:
        return _fail(spool, f"the node's privileged entry ended without a result (exit {code})")
    write_result(spool, replace(final[-1], started_at=started_at, ended_at=time.time()))
    return 0 if final[-1].ok else (code or 1)


def _fail(spool: Path, message: str) -> int:
    try:
        write_result(spool, WarmupResult(ok=False, error=message))
    except OSError:
        pass
    say(message, sys.stderr)
    return 1


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 1:
        print("usage: python -I -m builder_jobs.warmup_job SPEC_PATH", file=sys.stderr)
        return 2
    os.umask(0o077)
    return run(Path(args[0]).absolute(), os.environ)


if __name__ == "__main__":
    sys.exit(main())
