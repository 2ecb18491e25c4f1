"""Writing a benchmark's section into BENCHMARKS.md, shared by the bench/ scripts."""
from pathlib import Path

HEADER = "# pgfleet benchmarks\n\nEvery figure here was written by the command shown with it.\n"


def write_section(path: Path, title: str, section: str) -> None:
    """Replaces the section headed `title` (up to the next `## `), or appends it."""
    text = path.read_text() if path.exists() else HEADER
    marker = title + "\n"
    if marker in text:
        start = text.index(marker)
        nxt = text.find("\n## ", start + 1)
        text = text[:start] + section + (text[nxt + 1:] if nxt != -1 else "")
    else:
        text = text.rstrip() + "\n\n" + section
    path.write_text(text)
