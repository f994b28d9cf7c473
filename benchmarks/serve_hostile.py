"""What each hostile or careless input costs the HTTP service: its answer, the seconds to it, the
server's peak memory rise, and how long a normal request sent meanwhile waits.

    python benchmarks/serve_hostile.py                       # the shipped checkpoint
    python benchmarks/serve_hostile.py --ckpt_path other.ckpt

Starts ``python -m cifar_lightning serve`` on a free loopback port (with ``--body_timeout`` and
``--header_timeout`` of 2 s, to keep the run short; the defaults are 15 and 10 s), sends each input
on its own connection (a burst: from 8 clients at once), samples the resident memory of the
server's whole process tree every 20 ms, and prints a Markdown table (``docs/deploy.md`` shows
one). Needs the ``[dev]`` extra: it reuses the test suite's server helpers (``tests/serving.py``).
"""

from __future__ import annotations

import argparse
import io
import socket
import struct
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from serving import SHIPPED_CKPT, Client, running_server, tree_rss_mb  # noqa: E402

TIMEOUT = 2  # the server's --body_timeout and --header_timeout here
BURST = 8


def encoded(image: Image.Image, fmt: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def gif_bomb(width: int = 13000, height: int = 13000) -> bytes:
    """35 bytes of GIF whose header declares width x height pixels."""
    screen = b"GIF89a" + struct.pack("<HHBBB", width, height, 0x80, 0, 0) + b"\x00\x00\x00\xff\xff\xff"
    frame = b"\x2c" + struct.pack("<HHHHB", 0, 0, width, height, 0) + b"\x02\x02\x44\x01\x00"
    return screen + frame + b"\x3b"


def raw(port: int, data: bytes) -> int:
    """Send raw bytes, read until the server closes: the status code (0: closed without one)."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(data)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    return int(answer[9:12] or 0)


def head(length: int, content_type: str = "multipart/form-data; boundary=b") -> bytes:
    return (f"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: {content_type}\r\n"
            f"Content-Length: {length}\r\n\r\n").encode()


def idle_connections(port: int, count: int = 200) -> int:
    """Open ``count`` connections that send nothing; the status most got (408 once the header timeout closes them)."""
    sockets = [socket.create_connection(("127.0.0.1", port), timeout=30) for _ in range(count)]
    statuses = []
    for sock in sockets:
        with sock:
            answer = b""
            while chunk := sock.recv(65536):
                answer += chunk
            statuses.append(int(answer[9:12] or 0))
    return max(set(statuses), key=statuses.count)


def inputs(port: int) -> list[tuple[str, object]]:
    """(what, a function of a Client returning a status) for each hostile input."""
    rng = np.random.default_rng(0)
    noise = Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8))
    grey16 = Image.fromarray((rng.integers(0, 65536, (64, 64))).astype(np.uint16))
    large_grey = encoded(Image.fromarray(np.zeros((6300, 6300), np.uint8)), "PNG")
    large_rgb = encoded(Image.fromarray(np.zeros((6300, 6300, 3), np.uint8)), "PNG")
    large_jpeg = encoded(Image.fromarray(np.zeros((5475, 7300, 3), np.uint8)), "JPEG")
    boundary = b"b0undary"
    part = (b"--" + boundary + b'\r\nContent-Disposition: form-data; name="image"; filename="a.png"\r\n'
            b"Content-Type: image/png\r\n\r\n" + encoded(noise, "PNG") + b"\r\n")
    two = part + part + b"--" + boundary + b"--\r\n"
    post = lambda name, data: lambda client: client.predict(name, data).status  # noqa: E731
    return [
        ("a 32x32 PNG (normal)", post("ok.png", encoded(noise, "PNG"))),
        ("a text file named notes.jpg", post("notes.jpg", b"these are my notes\n" * 20)),
        ("a 16-bit greyscale PNG, 64x64", post("grey16.png", encoded(grey16, "PNG"))),
        ("a 35-byte GIF declaring 13,000x13,000", post("bomb.gif", gif_bomb())),
        (f"{BURST} of those at once", post("bomb.gif", gif_bomb())),
        (f"a 40-megapixel greyscale PNG ({len(large_grey) // 1024} KB)", post("grey.png", large_grey)),
        (f"a 40-megapixel RGB PNG ({len(large_rgb) // 1024} KB)", post("rgb.png", large_rgb)),
        (f"{BURST} 40-megapixel RGB PNGs at once", post("rgb.png", large_rgb)),
        (f"a 40-megapixel JPEG ({len(large_jpeg) // 1024} KB)", post("big.jpg", large_jpeg)),
        ("an 11 MB upload, asked first as curl does (Expect: 100-continue)", lambda client: raw(
            port, head(11 * 2**20).replace(b"\r\n\r\n", b"\r\nExpect: 100-continue\r\n\r\n"))),
        ("two image fields", lambda client: client.request(
            "POST", "/predict", two, {"Content-Type": f"multipart/form-data; boundary={boundary.decode()}"}).status),
        ("a declared body of 1 GiB", lambda client: raw(port, head(2**30))),
        ("a body that stops (5 MiB declared, 1 KB sent)", lambda client: raw(port, head(5 * 2**20) + bytes(1000))),
        ("headers begun, never finished", lambda client: raw(port, b"POST /predict HTTP/1.1\r\nHost: x\r\n")),
        ("200 connections that send nothing", lambda client: idle_connections(port)),
    ]


def measure(server, what: str, send) -> dict:
    """Send one input (or a burst of it), with a normal request 0.2 s later, sampling memory meanwhile."""
    normal = encoded(Image.fromarray(np.full((32, 32, 3), 128, np.uint8)), "PNG")
    before = tree_rss_mb(server.process.pid)
    peak, done = [before], threading.Event()

    def sample():
        while not done.wait(0.02):
            peak[0] = max(peak[0], tree_rss_mb(server.process.pid))

    def one(_):
        started = time.perf_counter()
        status = send(Client(server.port, timeout=120))
        return status, time.perf_counter() - started

    def normal_request():
        time.sleep(0.2)
        started = time.perf_counter()
        status = Client(server.port).predict("normal.png", normal).status
        return status, time.perf_counter() - started

    sampler = threading.Thread(target=sample)
    sampler.start()
    count = BURST if what.startswith(str(BURST)) else 1
    with ThreadPoolExecutor(count + 1) as pool:
        meanwhile = pool.submit(normal_request)
        results = list(pool.map(one, range(count)))
        normal_status, normal_seconds = meanwhile.result()
    done.set()
    sampler.join()
    statuses = sorted({status for status, _ in results})
    return {"what": what, "status": " / ".join(map(str, statuses)),
            "seconds": max(seconds for _, seconds in results), "memory": peak[0] - before,
            "normal": f"{normal_seconds:.2f} ({normal_status})"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ckpt_path", default=str(SHIPPED_CKPT))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder, running_server(
            args.ckpt_path, Path(folder) / "serve.log", "--body_timeout", str(TIMEOUT),
            "--header_timeout", str(TIMEOUT)) as server:
        Client(server.port).predict("warm.png", encoded(Image.new("RGB", (32, 32)), "PNG"))
        rows = []
        for what, send in inputs(server.port):
            rows.append(measure(server, what, send))
            print(f"{what}: {rows[-1]['status']} in {rows[-1]['seconds']:.2f} s", file=sys.stderr, flush=True)
        print(f"server: {args.ckpt_path}; --body_timeout and --header_timeout {TIMEOUT} s; memory: the server's "
              f"process tree, {tree_rss_mb(server.process.pid):.0f} MiB at the end")
    print("\n| input | status | seconds to the answer (slowest) | peak memory rise, MiB | a normal request meanwhile: seconds (status) |")
    print("| --- | --- | ---: | ---: | --- |")
    for row in rows:
        print(f"| {row['what']} | {row['status']} | {row['seconds']:.2f} | {row['memory']:+.0f} | {row['normal']} |")


if __name__ == "__main__":
    main()
