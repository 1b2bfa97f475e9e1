"""Commands copied from the project's Markdown (README, runbooks) at test time, so the tests run what a reader
would paste, and a doc change is tested as written."""

from __future__ import annotations

import re
from pathlib import Path

FENCE = re.compile(r"^( *)```(\w*)\n(.*?)^\1```", re.M | re.S)


def section(markdown: str, heading: str) -> str:
    """The text under the first heading that starts with ``heading`` (any level), up to the next heading of
    the same or a higher level. Lines inside fenced blocks are never headings (``# a comment``)."""
    out: list[str] = []
    level = 0
    fenced = False
    for line in markdown.splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
        m = None if fenced else re.match(r"(#+) (.*)", line)
        if level and m and len(m.group(1)) <= level:
            break
        if level:
            out.append(line)
        elif m and m.group(2).startswith(heading):
            level = len(m.group(1))
    if not level:
        raise LookupError(f"no heading {heading!r}")
    return "\n".join(out) + "\n"


def code_blocks(path: Path, heading: str, lang: str = "bash") -> list[str]:
    """The fenced ``lang`` blocks of a section, in order, dedented to the fence's indentation."""
    text = section(path.read_text(), heading)
    blocks = []
    for m in FENCE.finditer(text):
        if m.group(2) == lang:
            indent = len(m.group(1))
            blocks.append("\n".join(line[indent:] for line in m.group(3).splitlines()))
    if not blocks:
        raise LookupError(f"no {lang} block under {heading!r} in {path}")
    return blocks


def commands(block: str) -> list[str]:
    """Shell commands of a block: comments dropped, backslash continuations joined."""
    out: list[str] = []
    pending = ""
    for line in block.splitlines():
        stripped = line.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        pending += stripped[:-1] + " " if stripped.endswith("\\") else stripped
        if not stripped.endswith("\\"):
            out.append(pending)
            pending = ""
    return out
