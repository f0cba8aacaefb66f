"""A real demo run in trackio's local dashboard, photographed by headless Chromium: docs/trackio-dashboard.png.

    python benchmarks/trackio_screenshot.py [--out DIR] [--max-steps 400] [--png docs/trackio-dashboard.png]

Runs `sftrl demo --report-to trackio` (trackio's database under DIR/trackio), starts trackio's dashboard on
localhost for that project, opens it in Debian's Chromium (`apt-get install chromium`) with the X-axis set
to `train/global_step`, no smoothing, and the metrics filtered to the held-out loss, pass@1 and pass@64, and
saves the screenshot. It prints each
command it ran and what the database holds.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request

PROJECT = "sftrl-demo"
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(url: str, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"the trackio dashboard did not answer at {url} within {timeout_s:.0f} s")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="/tmp/sftrl-trackio-demo")
    parser.add_argument("--max-steps", type=int, default=400)
    parser.add_argument("--png", default=os.path.join(os.path.dirname(__file__), "..", "docs", "trackio-dashboard.png"))
    parser.add_argument("--reuse", action="store_true", help="photograph the run already in --out")
    ns = parser.parse_args()
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        print("no chromium on PATH: apt-get install chromium", file=sys.stderr)
        return 1
    os.environ["TRACKIO_DIR"] = os.path.join(os.path.abspath(ns.out), "trackio")  # before trackio is imported
    env = dict(os.environ)
    if not ns.reuse:
        shutil.rmtree(ns.out, ignore_errors=True)
        demo = [sys.executable, "-m", "sftrl_callbacks.cli", "demo", "--report-to", "trackio", "--quiet"]
        demo += ["--output-dir", ns.out, "--max-steps", str(ns.max_steps)]
        print("$", " ".join(demo), flush=True)
        subprocess.run(demo, check=True, env=env)

    port = free_port()
    show = (
        f"import trackio; trackio.show(project={PROJECT!r}, open_browser=False, block_thread=True, share=False, "
        f"server_port={port}, mcp_server=False)"
    )
    print("$", sys.executable, "-c", repr(show), flush=True)
    server = subprocess.Popen(
        [sys.executable, "-c", show], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT
    )
    try:
        base = f"http://127.0.0.1:{port}/"
        wait_for(base)
        # the held-out loss, pass@1 and pass@64, unsmoothed, against the trainer's step
        view = "x_axis=train/global_step&smoothing=0&metric_filter=mixed/(loss|pass@1|pass@64)$"
        url = f"{base}?project={PROJECT}&{view}"
        png = os.path.abspath(ns.png)
        with_profile = [f"--user-data-dir={os.path.join(os.path.abspath(ns.out), 'chromium-profile')}"]
        shot = [chromium, *CHROMIUM_FLAGS, *with_profile, "--window-size=1600,1000", "--virtual-time-budget=20000"]
        shot += [f"--screenshot={png}", url]
        print("$", " ".join(shot), flush=True)
        subprocess.run(shot, check=True, timeout=180, capture_output=True)
        print(f"wrote {png} ({os.path.getsize(png)} bytes)")
    finally:
        server.terminate()
        server.wait(timeout=30)

    from trackio.sqlite_storage import SQLiteStorage

    for run in SQLiteStorage.get_runs(PROJECT):
        logs = SQLiteStorage.get_logs(PROJECT, run)
        names = sorted({k for row in logs for k in row if k.startswith("sftrl/")})
        steps = sorted({row["train/global_step"] for row in logs if any(k.startswith("sftrl/") for k in row)})
        print(f"trackio run {run}: {len(logs)} points, {len(names)} sftrl metrics at steps {steps}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
