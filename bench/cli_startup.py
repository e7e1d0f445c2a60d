"""CLI start-up (issue 12): the imports ``imgsave status`` and ``imgsave submit`` pay
before they do anything, for two source trees, alternating, with the interpreter of the
runtime users run (/opt/imgsave/venv, which holds the dependencies). ``status`` needs the
CLI and the site's save service; ``submit`` also the registry's client (it checks the
registry before submitting) and the job-script template.

    .venv/bin/python bench/cli_startup.py --before /tmp/imgsave-main [--runs 20] [--update-docs]

``--before`` is a checkout of the code to compare with (e.g. ``git archive main | tar -x
-C DIR``); the other tree is this one. Prints the wall time of
``python -c "import ..."`` (interpreter start-up included) and, from
``python -X importtime``, what the packages that cost most add to ``status``.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

TOP = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(TOP))

from bench.docs_table import replace_section  # noqa: E402

PYTHON = "/opt/imgsave/venv/bin/python"
PROBES = {
    "status": "import api.cli.commands, api.service.site",
    "submit": "import api.cli.commands, api.service.site, registry.kinds, builder_jobs.script",
}
PACKAGES = ("site_configs.schema", "pydantic", "click", "sqlalchemy", "flask", "requests",
            "jinja2", "api.reports.report", "api.web.serve", "api.cli.remote",
            "api.cli.commands")  # fmt: skip


def env_for(tree: Path) -> dict[str, str]:
    return {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(tree), "LANG": "C.UTF-8"}


def wall(tree: Path, probe: str) -> float:
    start = time.perf_counter()
    subprocess.run([PYTHON, "-c", probe], env=env_for(tree), cwd="/", check=True)
    return time.perf_counter() - start


def importtime(tree: Path) -> dict[str, float]:
    """Cumulative import ms of :data:`PACKAGES` (absent: not imported)."""
    err = subprocess.run([PYTHON, "-X", "importtime", "-c", PROBES["status"]],
                         env=env_for(tree), cwd="/",
                         capture_output=True, text=True, check=True).stderr  # fmt: skip
    found: dict[str, float] = {}
    for line in err.splitlines():
        if not line.startswith("import time:") or "|" not in line:
            continue
        _, cumulative, name = line.split("|")
        if name.strip() in PACKAGES and cumulative.strip().isdigit():
            found[name.strip()] = int(cumulative.strip()) / 1000
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", type=Path, required=True)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--update-docs", action="store_true")
    args = parser.parse_args()
    trees = {"before": args.before.resolve(), "after": TOP}
    for tree in trees.values():  # compile the .pyc files once, untimed
        subprocess.run([PYTHON, "-c", PROBES["submit"]], env=env_for(tree), cwd="/", check=True)
    walls: dict[tuple[str, str], list[float]] = {(k, p): [] for k in trees for p in PROBES}
    imports: dict[str, list[dict[str, float]]] = {k: [] for k in trees}
    for run in range(args.runs):
        order = list(trees) if run % 2 else list(reversed(trees))
        for name in order:
            for probe, code in PROBES.items():
                walls[name, probe].append(wall(trees[name], code))
            imports[name].append(importtime(trees[name]))
    lines = ["| | before | after |", "|---|---|---|"]
    for probe, code in PROBES.items():
        lines.append(f"| {probe}: `python -c \"{code}\"` wall (median) | "
                     + " | ".join(f"{statistics.median(walls[k, probe]) * 1000:.0f} ms"
                                  for k in trees) + " |")
    for package in PACKAGES:
        cells = []
        for k in trees:
            seen = [row[package] for row in imports[k] if package in row]
            cells.append(f"{statistics.median(seen):.0f} ms" if len(seen) == len(imports[k])
                         else "not imported")
        lines.append(f"| status, `-X importtime` cumulative: `{package}` | " + " | ".join(cells)
                     + " |")
    result = "\n".join(lines)
    print(result)
    if args.update_docs:
        command = (f".venv/bin/python bench/cli_startup.py --before {args.before} "
                   f"--runs {args.runs} --update-docs")
        replace_section(TOP / "docs" / "benchmarks.md", "CLI start-up",
                        "What `status` and `submit` import before working, with the users' "
                        "runtime interpreter "
                        f"({PYTHON}), {args.runs} alternating runs per tree; before = "
                        f"the code before issue 12.\n\n    {command}\n\n{result}\n")


if __name__ == "__main__":
    main()
