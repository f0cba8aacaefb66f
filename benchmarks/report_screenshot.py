"""`sftrl report` of a run, opened in headless Chromium and photographed: what a person sees.

    python benchmarks/report_screenshot.py OUTPUT_DIR [--png docs/real-model-report.png] [--height 3200]

Renders `<OUTPUT_DIR>/sftrl/report.html` with the current code, opens it in Debian's Chromium
(`apt-get install chromium`) and saves a full-width screenshot.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys

from trackio_screenshot import CHROMIUM_FLAGS

from sftrl_callbacks.report import render_report


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("output_dir")
    parser.add_argument("--png", default=os.path.join(os.path.dirname(__file__), "..", "docs", "real-model-report.png"))
    parser.add_argument("--width", type=int, default=1250)
    parser.add_argument("--height", type=int, default=3200)
    ns = parser.parse_args()
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        print("no chromium on PATH: apt-get install chromium", file=sys.stderr)
        return 1
    _, page = render_report(ns.output_dir)
    png = os.path.abspath(ns.png)
    command = [
        chromium,
        *CHROMIUM_FLAGS,
        f"--user-data-dir={os.path.join(os.path.dirname(page), '.chromium')}",
        f"--window-size={ns.width},{ns.height}",
        f"--screenshot={png}",
        "file://" + os.path.abspath(page),
    ]
    print(" ".join(command))
    subprocess.run(command, check=True, capture_output=True, timeout=120)
    shutil.rmtree(os.path.join(os.path.dirname(page), ".chromium"), ignore_errors=True)
    print(f"wrote {png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
