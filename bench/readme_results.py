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
    for md in sorted((ROOT / "results").glob("*.md"), key=lambda m: (m.stem != "evidence", m.name)):
        body = md.read_text().strip()
        if "<!-- readme:start -->" in body:  # a long result file names the part the README shows
            head, intro = body.split("<!-- readme:start -->")[0].split("\n", 1)
            part = body.split("<!-- readme:start -->", 1)[1].split("<!-- readme:end -->", 1)[0].strip()
            part = re.sub(r"\]\((evidence[\w.]*\.png)\)", r"](results/\1)", part)  # links relative to the README
            body = f"{head}\n\n{intro.strip()}\n\n{part}\n\nEvery cell and the commands: [`results/{md.name}`](results/{md.name})."
        body = re.sub(r"^# ", "### ", body, count=1)  # nest under the README's heading
        body = body.replace("\n## Commands", "\n#### Commands")
        parts.append(body + ("" if "Every cell" in body else f"\n\n(from [`results/{md.name}`](results/{md.name}))"))
    section = "\n\n".join(parts) if parts else "No results yet: run `python bench/reproduce.py short`."
    if START not in text:
        text = text.rstrip() + f"\n\n## Results\n\n{START}\n{END}\n"
    pre, rest = text.split(START, 1)
    _, post = rest.split(END, 1)
    readme.write_text(f"{pre}{START}\n{section}\n{END}{post}")


if __name__ == "__main__":
    main()
