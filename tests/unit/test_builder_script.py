"""The rendered save-job script: golden file, quoting proved by running it, StrictUndefined."""

from __future__ import annotations

import json
import os
import stat
import subprocess
from pathlib import Path

import jinja2
import pytest

from builder_jobs.script import SAVE_JOB_TEMPLATE, make_environment, render_job_script
from core.errors import InvalidRequest

GOLDEN = Path(__file__).resolve().parents[1] / "captures" / "golden" / "save_job_nasty.sh"
NASTY_DIR = '/spool/it\'s a "dir" $(touch /tmp/imgsave-pwned) `id` ;&|*'
NASTY_SPEC = Path(NASTY_DIR) / "spec.json"
NASTY_PYTHON = "/opt/my python/bin/python3 $(reboot)"
# the variables a Slurm job sees (SlurmScheduler.job_id_variable, node_variable)
JOB_VARIABLES = {"job_id_variable": "SLURM_JOB_ID", "node_variable": "SLURMD_NODENAME"}


def test_render_matches_golden_file() -> None:
    text = render_job_script(NASTY_SPEC, NASTY_PYTHON, "0a1b2c3d", **JOB_VARIABLES)
    if os.environ.get("IMGSAVE_UPDATE_GOLDEN"):
        GOLDEN.write_text(text)
    assert text == GOLDEN.read_text()


def test_script_is_scheduler_neutral_and_strict() -> None:
    text = render_job_script(NASTY_SPEC, NASTY_PYTHON, "0a1b2c3d", **JOB_VARIABLES)
    assert "#SBATCH" not in text and "#PBS" not in text
    lines = text.splitlines()
    assert lines[0] == "#!/bin/bash"
    assert "set -euo pipefail" in lines
    assert "umask 077" in lines
    assert lines[-1].startswith("exec ")
    assert " -I -m builder_jobs.job_side " in lines[-1]  # the unprivileged half


def test_quoting_survives_a_real_shell(tmp_path: Path) -> None:
    """Run the script with bash: the fake python must get the nasty path as one argument."""
    fake_dir = tmp_path / "my python $(id) 'q'"
    fake_dir.mkdir()
    fake_python = fake_dir / "python3"
    record = tmp_path / "argv.json"
    fake_python.write_text(
        "#!/usr/bin/python3\nimport json, sys\n"
        f"json.dump(sys.argv[1:], open({str(record)!r}, 'w'))\n"
    )
    fake_python.chmod(stat.S_IRWXU)
    pwned = Path("/tmp/imgsave-pwned")
    pwned.unlink(missing_ok=True)
    script = tmp_path / "job.sh"
    script.write_text(render_job_script(NASTY_SPEC, str(fake_python), "abc123", **JOB_VARIABLES))
    subprocess.run(["bash", str(script)], check=True, timeout=30)  # noqa: S603
    assert json.loads(record.read_text()) == ["-I", "-m", "builder_jobs.job_side", str(NASTY_SPEC)]
    assert not pwned.exists(), "a $(...) in the spec path was executed"


def test_bash_syntax_check() -> None:
    text = render_job_script(NASTY_SPEC, NASTY_PYTHON, "0a1b2c3d", **JOB_VARIABLES)
    subprocess.run(["bash", "-n"], input=text, text=True, check=True)  # noqa: S603, S607


def test_strict_undefined_fails_on_missing_variable() -> None:
    template = make_environment().get_template(SAVE_JOB_TEMPLATE)
    with pytest.raises(jinja2.UndefinedError, match="python"):
        template.render(spec_path="/spool/x/spec.json", request_id="abc", job_id_variable="J",
                        node_variable="", step_variable="", neutral_job_id="I",
                        neutral_node="N")


@pytest.mark.parametrize(
    "spec_path, python, request_id",
    [
        (Path("/s/spec.json"), "python3", "abc\nrm -rf /"),
        (Path("/s/spec.json"), "python3", ""),
        (Path("/s/spec.json"), "python3", "ab-c"),
        (Path("/s/spec.json"), "", "abc"),
        (Path("/s/spec.json"), "-c", "abc"),
        (Path("relative/spec.json"), "python3", "abc"),
        (Path("-rf/spec.json"), "python3", "abc"),
    ],
)
def test_bad_inputs_are_refused(spec_path: Path, python: str, request_id: str) -> None:
    with pytest.raises(InvalidRequest):
        render_job_script(spec_path, python, request_id, **JOB_VARIABLES)


@pytest.mark.parametrize("name", ["", "SLURM_JOB_ID}; id; #", "1X", "A-B"])
def test_bad_variable_names_are_refused(name: str) -> None:
    with pytest.raises(InvalidRequest):
        render_job_script(NASTY_SPEC, "python3", "abc", job_id_variable=name, node_variable="")
    with pytest.raises(InvalidRequest):
        render_job_script(NASTY_SPEC, "python3", "abc", job_id_variable="J",
                          node_variable=name or "-")


def test_the_job_sees_its_id_and_node_under_neutral_names() -> None:
    text = render_job_script(NASTY_SPEC, NASTY_PYTHON, "abc", job_id_variable="PBS_JOBID",
                             node_variable="")
    assert 'export IMGSAVE_JOB_ID="${PBS_JOBID:-}"' in text.splitlines()
    assert "IMGSAVE_NODE" not in text  # PBS names no node: the spec's node stands
