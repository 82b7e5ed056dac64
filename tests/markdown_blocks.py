"""Reading the fenced code blocks of the project's Markdown files, for the tests that run the docs as written."""

from __future__ import annotations

from pathlib import Path


def fenced_blocks(path: Path, lang: str) -> list[tuple[str, str]]:
    """``(heading, text)`` of every fenced block of ``lang`` in the Markdown file, under its nearest heading."""
    blocks: list[tuple[str, str]] = []
    heading, body, fence = "", [], None
    for line in path.read_text(encoding="utf-8").splitlines():
        if fence is None:
            if line.startswith("#"):
                heading = line.lstrip("#").strip()
            elif line.startswith("```"):
                fence, body = line[3:].strip(), []
        elif line.startswith("```"):
            if fence == lang:
                blocks.append((heading, "\n".join(body) + "\n"))
            fence = None
        else:
            body.append(line)
    return blocks
