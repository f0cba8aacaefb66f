"""Grades every completion in tests/attacks/ on HumanEval/0 with the code verifier; one JSON line per attack.

Run by tests/test_code_sandbox.py in a process of its own with its own limits (memory, file size, processes, time),
so that a sandbox that failed would fail the test without taking the machine down. A local TCP service listens
beside it, to see whether an attack reaches it.
"""

import json
import socket
import sys
import threading
import time
from pathlib import Path

from sftrl_callbacks.humaneval import humaneval_rows
from sftrl_callbacks.verifiers.code import CodeVerifier


def listen() -> tuple[socket.socket, list[bytes]]:
    server = socket.socket()
    for port in range(40000, 40100):
        try:
            server.bind(("127.0.0.1", port))
            break
        except OSError:
            continue
    server.listen(16)
    received: list[bytes] = []

    def serve() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            with conn:
                received.append(conn.recv(1024) or b"<connected>")

    threading.Thread(target=serve, daemon=True).start()
    return server, received


def main() -> None:
    row = next(r for r in humaneval_rows() if r["task_id"] == "HumanEval/0")
    row["code_prompt"] = row["prompt"]
    verifier = CodeVerifier(timeout_s=3.0, memory_mb=256, workers=1)
    print(json.dumps({"layers": verifier.layers}), flush=True)
    server, received = listen()
    for path in sorted(Path(sys.argv[1]).glob("*.py")):
        start = time.time()
        outcome = verifier.grade_one("```python\n" + path.read_text() + "\n```", row)
        seconds = time.time() - start
        print(json.dumps({"attack": path.stem, "passed": outcome.passed, "reason": outcome.reason,
                          "seconds": round(seconds, 2), "received": [r.decode(errors="replace") for r in received]}),
              flush=True)  # fmt: skip
        received.clear()
    server.close()


if __name__ == "__main__":
    main()
