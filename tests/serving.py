"""A real ``python -m cifar_lightning serve`` process on a free loopback port, and a small HTTP client.

The client is the standard library's ``http.client`` with a hand-made multipart body, so the tests
send what ``curl -F image=@file`` sends and depend on no HTTP library of the server's.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from conftest import REPO

# The model the deploy tests serve and export (README: the shipped checkpoint).
SHIPPED_CKPT = REPO / "cifar_lightning" / "weights" / "cifar10_cnn.ckpt"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def multipart(fields: dict[str, tuple[str, bytes, str] | str]) -> tuple[bytes, str]:
    """(body, content type) of a multipart form; a tuple value is a file (filename, data, content type)."""
    boundary = uuid.uuid4().hex
    parts = []
    for name, value in fields.items():
        if isinstance(value, tuple):
            filename, data, content_type = value
            head = (f'Content-Disposition: form-data; name="{name}"; filename="{filename}"\r\n'
                    f"Content-Type: {content_type}\r\n\r\n")
        else:
            head, data = f'Content-Disposition: form-data; name="{name}"\r\n\r\n', value.encode()
        parts.append(f"--{boundary}\r\n{head}".encode() + data + b"\r\n")
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


@dataclass
class Answer:
    status: int
    body: bytes
    content_type: str

    def json(self):
        return json.loads(self.body)


class Client:
    """One keep-alive connection to the server, as a browser or ``requests.Session`` would use."""

    def __init__(self, port: int, timeout: float = 60):
        self.port, self.timeout = port, timeout
        self.connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)

    def request(self, method: str, path: str, body: bytes | None = None, headers: dict | None = None) -> Answer:
        for attempt in (1, 2):
            try:
                self.connection.request(method, path, body=body, headers=headers or {})
                response = self.connection.getresponse()
                answer = Answer(response.status, response.read(), response.getheader("content-type", ""))
                if response.will_close:
                    self.reconnect()
                return answer
            except (ConnectionError, http.client.RemoteDisconnected):
                self.reconnect()  # the server closed an idle keep-alive connection: once more on a new one
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def reconnect(self) -> None:
        self.connection.close()
        self.connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=self.timeout)

    def predict(self, filename: str, data: bytes, content_type: str = "application/octet-stream") -> Answer:
        body, form_type = multipart({"image": (filename, data, content_type)})
        return self.request("POST", "/predict", body, {"Content-Type": form_type})

    def close(self) -> None:
        self.connection.close()


@dataclass
class Server:
    port: int
    process: subprocess.Popen
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def client(self) -> Client:
        return Client(self.port)


def wait_until_healthy(server: Server, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(f"serve exited with {server.process.returncode}:\n{server.log.read_text()[-3000:]}")
        with contextlib.suppress(OSError, http.client.HTTPException):
            if Client(server.port, timeout=2).request("GET", "/health").status == 200:
                return
        time.sleep(0.25)
    raise RuntimeError(f"serve not healthy after {timeout} s:\n{server.log.read_text()[-3000:]}")


def tree_rss_mb(pid: int) -> float:
    """Resident memory of a process and all its descendants (the server, its HTTP and inference
    workers), in MiB, from /proc."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    total, todo = 0, [pid]
    while todo:
        current = todo.pop()
        todo.extend(children.get(current, []))
        with contextlib.suppress(OSError, ValueError, IndexError):
            total += int((Path("/proc") / str(current) / "statm").read_text().split()[1])
    return total * os.sysconf("SC_PAGE_SIZE") / 2**20


def stop(process: subprocess.Popen) -> None:
    """SIGTERM to the server (LitServe stops its workers), then SIGKILL to its process group if it hangs."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            pass
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)  # workers left behind, if any
    process.wait(timeout=10)


@contextlib.contextmanager
def running_server(ckpt: str | os.PathLike, log: Path, *args: str) -> Iterator[Server]:
    port = free_port()
    command = [sys.executable, "-m", "cifar_lightning", "serve", "--ckpt_path", str(ckpt), "--port", str(port),
               "--log_level", "warning", *args]
    with open(log, "wb") as out:
        process = subprocess.Popen(command, cwd=REPO, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                   start_new_session=True)
    server = Server(port, process, log)
    try:
        wait_until_healthy(server)
        yield server
    finally:
        stop(process)
