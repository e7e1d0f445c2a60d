"""Render the scheduler-neutral batch script that runs one save on its node.

The script only runs the job's unprivileged half on the spec (which asks the node's
privileged entry for the save); the scheduler's options
(node pinning, partition/queue, limits, job name, metadata) travel on the
``sbatch``/``qsub`` argv built by ``scheduler_glue``. Every value that reaches the
script goes through the ``shell_quote`` filter, and a variable missing from the
render call is an error (StrictUndefined), never an empty string.

The job's id and node reach the node side under imgsave's own names
(:data:`JOB_ID_VARIABLE`, :data:`NODE_VARIABLE`): the caller names the scheduler's
variables (its backend's ``job_id_variable``/``node_variable``), the script exports
them under the neutral names, and nothing in ``builder_jobs`` knows a scheduler.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import TYPE_CHECKING

from core.errors import InvalidRequest

if TYPE_CHECKING:  # imported when a script is rendered: the job side needs only the names
    import jinja2

TEMPLATE_DIR = Path(__file__).resolve().parent / "templates"
SAVE_JOB_TEMPLATE = "save_job.sh.j2"
# What the node side reads: the job's id, and its node as the scheduler names it.
JOB_ID_VARIABLE = "IMGSAVE_JOB_ID"
NODE_VARIABLE = "IMGSAVE_NODE"
# A variable name spliced into ${...}: shell quoting cannot apply there, so only this.
VARIABLE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def make_environment(template_dir: Path = TEMPLATE_DIR) -> jinja2.Environment:
    """A Jinja environment for shell scripts: StrictUndefined, ``shell_quote`` filter."""
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(template_dir)),
        undefined=jinja2.StrictUndefined,
        autoescape=False,  # noqa: S701 - renders shell, not HTML; values are shell-quoted
        keep_trailing_newline=True,
    )
    env.filters["shell_quote"] = _shell_quote
    return env


def _shell_quote(value: object) -> str:
    return shlex.quote(str(value))


def render_job_script(
    spec_path: Path, python: str, request_id: str, *, job_id_variable: str, node_variable: str,
    step_variable: str = "",
) -> str:
    """The text of the batch script that runs ``python -I -m builder_jobs.job_side SPEC``.

    ``request_id`` appears in a comment, so it must be our own alphanumeric id (as
    :func:`builder_jobs.spec.spool_dir_for` requires); ``python`` and ``spec_path``
    (absolute) may hold any characters and are shell-quoted. ``job_id_variable`` and
    ``node_variable`` ("" for none) name the scheduler's variables that the script
    exports as :data:`JOB_ID_VARIABLE` and :data:`NODE_VARIABLE`; with ``step_variable``
    (a save run as a step of the user's job) the id exported is ``JOB.STEP``. Raises
    :class:`InvalidRequest` for a bad id, python, variable name or relative spec path,
    and :class:`jinja2.UndefinedError` if the template asks for a variable not passed.
    """
    if not request_id.isalnum() or not request_id.isascii():
        raise InvalidRequest(f"bad request id {request_id!r}")
    if not python or python.startswith("-"):
        raise InvalidRequest(f"bad python interpreter for the node {python!r}")
    if not spec_path.is_absolute():
        # absolute also means it cannot start with "-" and be read as an option
        raise InvalidRequest(f"the spec path must be absolute, not {str(spec_path)!r}")
    for name in (job_id_variable, node_variable or "_", step_variable or "_"):
        if not VARIABLE_NAME.fullmatch(name):
            raise InvalidRequest(f"bad environment variable name {name!r}")
    template = make_environment().get_template(SAVE_JOB_TEMPLATE)
    return template.render(
        spec_path=str(spec_path),
        python=python,
        request_id=request_id,
        job_id_variable=job_id_variable,
        node_variable=node_variable,
        step_variable=step_variable,
        neutral_job_id=JOB_ID_VARIABLE,
        neutral_node=NODE_VARIABLE,
    )
