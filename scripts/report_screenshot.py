#!/usr/bin/env python3
"""Open a Snakemake HTML report or a figure (PNG) in headless Chromium, take a screenshot at report width and check
that something was drawn: the screenshot exists, has the size asked for, and is not a single colour.

    python scripts/report_screenshot.py report.html                       # screenshot path printed
    python scripts/report_screenshot.py results/figures/*.png --out-dir /tmp/shots
    python scripts/report_screenshot.py docs/study/dynamics.png --min-scale 0.4

A PNG is shown the way a report page shows it, inside an HTML page of the window's width (`max-width: 100%`), so
the screenshot is what a reader sees at that width; the script prints the scale at which the figure is drawn (a
2,500-pixel-wide figure in a 1,280-pixel window: about 0.5) and, with --min-scale, fails below it. An HTML file is
opened as it is; Chromium runs its JavaScript (a Snakemake report renders itself) for --virtual-time-budget ms
before the screenshot.

Chromium: the first of $CHROMIUM, `chromium`, `chromium-browser`, `google-chrome` on PATH. Without one the script
says how to install it (Debian/Ubuntu: `apt-get install -y chromium`) and exits with code 2.

Exit codes: 0 every file passed; 1 a check failed (or Chromium wrote no screenshot); 2 no Chromium found.
Needs numpy and Pillow (both in the project's environment).
"""

from __future__ import annotations

import argparse
import html
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

BROWSERS = ("chromium", "chromium-browser", "google-chrome")
INSTALL_HINT = (
    "no Chromium found (looked for $CHROMIUM, " + ", ".join(BROWSERS) + ").\n"
    "Install it, e.g. on Debian/Ubuntu (as root):\n"
    "    apt-get update && apt-get install -y chromium\n"
    "or point $CHROMIUM (or --chromium) at a Chromium/Chrome binary."
)
PAGE_MARGIN_PX = 8  # the body margin of the wrapper page (Chromium's default), on each side


def find_chromium(explicit: str | None = None) -> str | None:
    for name in (explicit, os.environ.get("CHROMIUM"), *BROWSERS):
        if name:
            found = shutil.which(name) or (name if Path(name).is_file() and os.access(name, os.X_OK) else None)
            if found:
                return found
    return None


def wrapper_page(png: Path, directory: Path) -> Path:
    """An HTML page showing `png` at most the window's width, as a report page shows a figure."""
    page = directory / f"{png.stem}.html"
    page.write_text(
        "<!DOCTYPE html><html><head><meta charset='utf-8'><style>"
        "body{margin:%dpx;background:#fff}img{max-width:100%%;height:auto;display:block}"
        "</style></head><body><img src='%s' alt='%s'></body></html>"
        % (PAGE_MARGIN_PX, html.escape(png.resolve().as_uri(), quote=True), html.escape(png.name, quote=True))
    )
    return page


def screenshot(chromium: str, page: Path, out: Path, width: int, height: int, budget_ms: int,
               timeout_s: float) -> subprocess.CompletedProcess:
    """Chromium's own --screenshot of `page` at width x height into `out`."""
    with tempfile.TemporaryDirectory(prefix="chromium-profile-") as profile:
        command = [
            chromium, "--headless", f"--screenshot={out}", f"--window-size={width},{height}",
            "--hide-scrollbars", "--disable-gpu", "--no-first-run", "--no-default-browser-check",
            "--disable-extensions", "--allow-file-access-from-files", f"--user-data-dir={profile}",
            f"--virtual-time-budget={budget_ms}",
        ]
        if hasattr(os, "geteuid") and os.geteuid() == 0:
            command.append("--no-sandbox")  # Chromium refuses to run as root with its sandbox (CI containers)
        command.append(page.resolve().as_uri())
        return subprocess.run(command, capture_output=True, text=True, timeout=timeout_s)


def check_image(path: Path, width: int, height: int, min_ink: float) -> list[str]:
    """Problems with the screenshot: wrong size, one colour only, or too few pixels off the dominant colour."""
    import numpy as np
    from PIL import Image

    with Image.open(path) as img:
        size = img.size
        pixels = np.asarray(img.convert("RGB"))
    problems = []
    if size != (width, height):
        problems.append(f"size {size[0]}x{size[1]}, asked {width}x{height}")
    flat = pixels.reshape(-1, 3)
    colours, counts = np.unique(flat, axis=0, return_counts=True)
    if len(colours) < 2:
        problems.append(f"blank: every pixel is {tuple(int(c) for c in colours[0])}")
    else:
        ink = 1.0 - counts.max() / counts.sum()
        if ink < min_ink:
            problems.append(f"nearly blank: {ink:.3%} of the pixels differ from the dominant colour "
                            f"(--min-ink {min_ink:.3%})")
    return problems


def figure_scale(png: Path, width: int) -> float:
    """The scale at which the wrapper page draws `png` in a window `width` pixels wide."""
    from PIL import Image

    with Image.open(png) as img:
        natural = img.size[0]
    return min(1.0, (width - 2 * PAGE_MARGIN_PX) / natural)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("files", nargs="+", type=Path, help="Snakemake report (.html/.htm) or figure (.png) files")
    p.add_argument("--out-dir", type=Path, default=None,
                   help="where the screenshots go (<name>.screenshot.png; default: a new temporary directory)")
    p.add_argument("--width", type=int, default=1280, help="window width in pixels (the report width)")
    p.add_argument("--height", type=int, default=2000, help="window height in pixels")
    p.add_argument("--chromium", default=None, help="Chromium/Chrome binary (default: $CHROMIUM, then PATH)")
    p.add_argument("--virtual-time-budget", type=int, default=10000,
                   help="ms of page time (JavaScript, loading) before the screenshot")
    p.add_argument("--timeout", type=float, default=120.0, help="seconds Chromium may take per file")
    p.add_argument("--min-ink", type=float, default=0.001,
                   help="least share of pixels that must differ from the dominant colour")
    p.add_argument("--min-scale", type=float, default=0.0,
                   help="a PNG drawn at a smaller scale than this in the window fails (0: no check)")
    args = p.parse_args(argv)

    chromium = find_chromium(args.chromium)
    if chromium is None:
        print(INSTALL_HINT, file=sys.stderr)
        return 2
    out_dir = args.out_dir or Path(tempfile.mkdtemp(prefix="report-screenshots-"))
    out_dir.mkdir(parents=True, exist_ok=True)

    failed = 0
    with tempfile.TemporaryDirectory(prefix="report-pages-") as pages:
        for path in args.files:
            problems, note = [], ""
            suffix = path.suffix.lower()
            if not path.is_file():
                print(f"FAIL {path}: no such file")
                failed += 1
                continue
            if suffix == ".png":
                page = wrapper_page(path, Path(pages))
                scale = figure_scale(path, args.width)
                note = f", figure drawn at {scale:.2f}x of its pixel width"
                if scale < args.min_scale:
                    problems.append(f"drawn at {scale:.2f}x of its pixel width, below --min-scale {args.min_scale}")
            elif suffix in (".html", ".htm"):
                page = path
            else:
                print(f"FAIL {path}: not .html/.htm or .png")
                failed += 1
                continue
            out = out_dir / f"{path.stem}.screenshot.png"
            out.unlink(missing_ok=True)
            try:
                proc = screenshot(chromium, page, out, args.width, args.height, args.virtual_time_budget,
                                  args.timeout)
            except subprocess.TimeoutExpired:
                proc = None
            if not out.is_file():
                why = "timed out" if proc is None else f"exit {proc.returncode}: {proc.stderr.strip()[-800:]}"
                print(f"FAIL {path}: Chromium wrote no screenshot ({why})")
                failed += 1
                continue
            problems += check_image(out, args.width, args.height, args.min_ink)
            status = "FAIL" if problems else "ok"
            print(f"{status} {path} -> {out}{note}" + (": " + "; ".join(problems) if problems else ""))
            failed += bool(problems)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
