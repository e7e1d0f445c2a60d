"""What ``imgsave submit``/``status`` import at start-up (issue 12): not the REST API,
the reports' SQL cache, the registry's HTTP client or the job-script templates.

Deterministic: it checks which modules a fresh interpreter loaded, not how long it took
(the figures are in docs/benchmarks.md, from bench/save_latency.py).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from click.testing import CliRunner

from api.cli import commands as cli
from api.reports.usage_report import GROUPINGS

TOP = Path(__file__).resolve().parents[2]
HEAVY = ("sqlalchemy", "flask", "werkzeug", "requests", "jinja2", "waitress", "matplotlib")


def _loaded_after(code: str) -> set[str]:
    probe = f"{code}\nimport json, sys\nprint(json.dumps(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", probe], cwd=TOP, capture_output=True,
                         text=True, check=True).stdout  # fmt: skip
    return {name.split(".")[0] for name in json.loads(out.splitlines()[-1])}


def test_the_cli_imports_no_heavy_package() -> None:
    loaded = _loaded_after("import api.cli.commands")
    assert "click" in loaded and "api" in loaded  # the probe sees what was imported
    assert not loaded & set(HEAVY), sorted(loaded & set(HEAVY))


def test_the_status_path_imports_no_heavy_package() -> None:
    """A Site and its save service (what ``status`` builds) stay light too."""
    loaded = _loaded_after("import api.cli.commands, api.service.site, api.service.saves")
    assert not loaded & set(HEAVY), sorted(loaded & set(HEAVY))


def test_lazy_commands_still_load_and_report_groupings_match() -> None:
    assert cli.REPORT_GROUPINGS == GROUPINGS
    ctx = cli.main.make_context("imgsave", ["--help"], resilient_parsing=True)
    names = cli.main.list_commands(ctx)
    assert {"serve", "token", "submit", "status", "report"} <= set(names)
    assert cli.main.get_command(ctx, "token") is not None
    out = CliRunner().invoke(cli.main, ["token", "--help"])
    assert out.exit_code == 0 and "create" in out.output
