"""Writing a benchmark's section into BENCHMARKS.md, shared by the bench/ scripts."""
from __future__ import annotations

import atexit
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HEADER = "# pgfleet benchmarks\n\nEvery figure here was written by the command shown with it.\n"


def wait_port(port: int, seconds: float, process: subprocess.Popen | None = None) -> None:
    """Waits until something listens on 127.0.0.1:`port`; exits if nothing
    does within `seconds`, or if `process` (the one meant to) has ended."""
    import socket
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            sys.exit(f"the process meant to listen on port {port} exited with {process.returncode}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    sys.exit(f"nothing listens on port {port} after {seconds} s")


_STAGED: dict[Path, Path] = {}


def staged(binary: Path) -> Path:
    """A copy of `binary` to run, made once per run of the script and removed
    when it ends.

    The release build of a collector as the linker had just written it ran
    10–14% slower at 10,000 agents here than a copy of the same bytes, while
    the same file through a hard link ran as fast as the original (BENCHMARKS.md,
    "The aggregator at 10,000 servers"): how the file came to be in the page
    cache matters, not its bytes or its name. A build under test is what the
    linker wrote, a baseline given by path is a copy, and an installed binary is
    a copy too; so every server a bench starts runs from a copy."""
    binary = Path(binary).resolve()
    if binary not in _STAGED:
        directory = Path(tempfile.mkdtemp(prefix="pgfleet-bin-"))
        atexit.register(shutil.rmtree, directory, True)
        copy = directory / binary.name
        shutil.copyfile(binary, copy)
        copy.chmod(0o755)
        _STAGED[binary] = copy
    return _STAGED[binary]


def machine_name() -> str:
    """The machine a benchmark ran on, as its report names it."""
    return f"{platform.machine()}, {os.cpu_count()} cores, Linux {platform.release()}"


def bench_json(command: list[str], env: dict[str, str]) -> dict:
    """Runs `command` from the repository's root with `env` added to the
    environment; the JSON object it printed last."""
    import json
    print("+", " ".join(command), env, file=sys.stderr, flush=True)
    root = Path(__file__).resolve().parent.parent
    out = subprocess.run(command, cwd=root, env=dict(os.environ, **env), check=True,
                         capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def cargo_bench(bench: str, env: dict[str, str]) -> dict:
    """`cargo bench -p pgfleet-tests --bench BENCH` by [`bench_json`]."""
    return bench_json(["cargo", "bench", "-q", "-p", "pgfleet-tests", "--bench", bench], env)


def heading(title: str, script: str, argv: list[str]) -> list[str]:
    """A section's first lines: its title, and the command that made it
    (`python3 SCRIPT ARGV...`), when and where."""
    import datetime
    import shlex
    command = shlex.join(["python3", script, *argv])
    return [title, "", f"Command: `{command.strip()}` (from the repository root). "
            f"Run on {datetime.date.today()} on {machine_name()}.", ""]


def write_section(path: Path, title: str, section: str) -> None:
    """Replaces the section headed `title` (up to the next `## `), or appends it."""
    text = path.read_text() if path.exists() else HEADER
    marker = title + "\n"
    if marker in text:
        start = text.index(marker)
        nxt = text.find("\n## ", start + 1)
        # A blank line before the next section, however the section ends.
        rest = "\n" + text[nxt + 1:] if nxt != -1 else ""
        text = text[:start] + section.rstrip("\n") + "\n" + rest
    else:
        text = text.rstrip() + "\n\n" + section
    path.write_text(text)


PALETTE = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b"]


def chart(series: dict[str, list[tuple[int, float]]], title: str, svg: Path, *, xlabel: str,
          ylabel: str, colours: dict[str, str] | None = None,
          dashed: set[str] | None = None) -> tuple[int, int]:
    """Lines of `series` (name: points of x and y), both axes logarithmic: a
    small SVG, no library. A series named in `colours` takes that colour, and
    one named in `dashed` is drawn dashed. Returns its width and height."""
    w, h, left, right, top, bottom = 790, max(420, 100 + 18 * len(series)), 60, 230, 40, 50
    values = [v for pts in series.values() for _, v in pts if v > 0]
    ns = [n for pts in series.values() for n, _ in pts]
    lo_v, hi_v = 10 ** math.floor(math.log10(min(values))), 10 ** math.ceil(math.log10(max(values)))
    lo_n, hi_n = min(ns), max(ns)
    x = lambda n: left + (w - left - right) * (math.log(n / lo_n) / math.log(hi_n / lo_n) if hi_n > lo_n else 0.5)
    y = lambda v: h - bottom - (h - top - bottom) * math.log(max(v, lo_v) / lo_v) / math.log(hi_v / lo_v)
    parts = [f'<rect width="{w}" height="{h}" fill="white"/>',
             f'<text x="{left}" y="{top - 16}" font-size="13">{title}</text>']
    v = lo_v
    while v <= hi_v * 1.0001:
        parts.append(f'<line x1="{left}" y1="{y(v):.1f}" x2="{w - right}" y2="{y(v):.1f}" stroke="#ddd"/>')
        parts.append(f'<text x="{left - 6}" y="{y(v) + 4:.1f}" text-anchor="end">{v:g}</text>')
        v *= 10
    for n in sorted(set(ns)):
        parts.append(f'<line x1="{x(n):.1f}" y1="{top}" x2="{x(n):.1f}" y2="{h - bottom}" stroke="#eee"/>')
        parts.append(f'<text x="{x(n):.1f}" y="{h - bottom + 16}" text-anchor="middle">{n:,}</text>')
    parts.append(f'<text x="{(left + w - right) / 2:.0f}" y="{h - 12}" text-anchor="middle">{xlabel}</text>')
    parts.append(f'<text x="14" y="{(top + h - bottom) / 2:.0f}" transform="rotate(-90 14 {(top + h - bottom) / 2:.0f})" '
                 f'text-anchor="middle">{ylabel}</text>')
    for i, (name, pts) in enumerate(series.items()):
        colour = (colours or {}).get(name, PALETTE[i % len(PALETTE)])
        pts = sorted(pts)
        line = " ".join(f"{x(n):.1f},{y(v):.1f}" for n, v in pts)
        dash = ' stroke-dasharray="6 4"' if name in (dashed or set()) else ""
        parts.append(f'<polyline fill="none" stroke="{colour}" stroke-width="2"{dash} points="{line}"/>')
        parts += [f'<circle cx="{x(n):.1f}" cy="{y(v):.1f}" r="3" fill="{colour}"/>' for n, v in pts]
        ly = top + 20 + 18 * i
        parts.append(f'<line x1="{w - right + 8}" y1="{ly - 4}" x2="{w - right + 26}" y2="{ly - 4}" '
                     f'stroke="{colour}" stroke-width="2"{dash}/>')
        parts.append(f'<text x="{w - right + 30}" y="{ly}" fill="{colour}">{name}</text>')
    svg.write_text(f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" '
                   f'font-family="sans-serif" font-size="11">\n' + "\n".join(parts) + "\n</svg>\n")
    return w, h


def to_png(svg: Path, size: tuple[int, int], png: Path) -> bool:
    """Draws the SVG (`size` pixels) as a PNG with headless Chromium, when it is installed."""
    exe = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if not exe:
        print("no Chromium: the chart stays an SVG only", file=sys.stderr)
        return False
    subprocess.run([exe, "--headless=new", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                    f"--screenshot={png}", f"--window-size={size[0]},{size[1]}", svg.resolve().as_uri()],
                   check=False, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=60)
    return png.exists()
