"""Regenerate the README's results section from results/*.md (between the results markers).

    .venv/bin/python bench/readme_results.py
"""
from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
START, END = "<!-- results:start -->", "<!-- results:end -->"


def main():
    readme = ROOT / "README.md"
    text = readme.read_text()
    parts = []
    for md in sorted((ROOT / "results").glob("*.md")):
        body = md.read_text().strip()
        body = re.sub(r"^# ", "### ", body, count=1)  # nest under the README's heading
        body = body.replace("\n## Commands", "\n#### Commands")
        parts.append(body + f"\n\n(from [`results/{md.name}`](results/{md.name}))")
    section = "\n\n".join(parts) if parts else "No results yet: run `python bench/reproduce.py short`."
    if START not in text:
        text = text.rstrip() + f"\n\n## Results\n\n{START}\n{END}\n"
    pre, rest = text.split(START, 1)
    _, post = rest.split(END, 1)
    readme.write_text(f"{pre}{START}\n{section}\n{END}{post}")


if __name__ == "__main__":
    main()
