"""Write a benchmark's latest table into its own section of docs/benchmarks.md."""

from __future__ import annotations

import re
from datetime import date
from pathlib import Path


def replace_section(doc: Path, title: str, body: str) -> None:
    """Replace (or append) the ``## title`` section of ``doc`` with ``body``."""
    text = doc.read_text() if doc.exists() else "# Benchmarks\n"
    section = f"## {title}\n\nMeasured {date.today().isoformat()}. {body.strip()}\n"
    pattern = re.compile(rf"^## {re.escape(title)}\n.*?(?=^## |\Z)", re.S | re.M)
    if pattern.search(text):
        text = pattern.sub(lambda _: section + "\n", text, count=1)
    else:
        text = text.rstrip("\n") + "\n\n" + section
    doc.write_text(text.rstrip("\n") + "\n")
