"""docs/cli.md documents every command and option (it is generated from the CLI)."""

from __future__ import annotations

import os
from pathlib import Path

from scripts.cli_docs import render

DOC = Path(__file__).resolve().parents[2] / "docs" / "cli.md"


def test_cli_docs_are_current() -> None:
    assert DOC.read_text() == render(), "run .venv/bin/python scripts/cli_docs.py"


def test_every_command_is_documented() -> None:
    text = DOC.read_text()
    for name in ("submit", "status", "queue", "cancel", "images", "delete", "report"):
        assert f"## imgsave {name}" in text
    assert os.path.exists(DOC)
