"""A minimal HTTP client of `genrec serve` (standard library only): for scripts, tests, benchmarks.

status, body = post_json("http://127.0.0.1:8000/recommend", {"history": [50, 172], "k": 10})
"""

from __future__ import annotations

import json
import socket
import subprocess
import time
import urllib.error
import urllib.request
from typing import Any


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now (for a server started next)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def post_json(url: str, body: Any, timeout: float = 60) -> tuple[int, Any]:
    """POST `body` as JSON; (status, decoded JSON answer), also for 4xx/5xx answers."""
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def wait_until_healthy(base_url: str, process: subprocess.Popen | None = None, timeout: float = 120) -> None:
    """Wait for `GET /health` to answer ok; RuntimeError when `process` exits first or time runs out."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(f"{base_url}/health", timeout=2) as response:
                if response.status == 200 and response.read().decode().strip('"') == "ok":
                    return
        except OSError:  # not listening yet (URLError and connection errors are OSErrors)
            pass
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"the server exited with code {process.returncode} before it was healthy")
        if time.monotonic() > deadline:
            raise RuntimeError(f"the server at {base_url} was not healthy after {timeout:.0f} s")
        time.sleep(0.5)


__all__ = ["free_port", "post_json", "wait_until_healthy"]
