"""A time limit on a request's headers, which uvicorn lacks: a client that opens a connection and
sends its headers slowly, or never finishes them, would otherwise hold the connection (and a file
descriptor) for as long as it likes. uvicorn's own keep-alive timeout covers idle connections only.

``protocol_with_header_timeout(seconds)`` returns uvicorn's HTTP protocol (httptools where it is
installed, as uvicorn's "auto" chooses, else h11) with the limit added: from a connection's start,
or from the first byte of a request after the last answer, its headers must be complete within
``seconds``, else the client gets ``408 Request Timeout`` and the connection is closed, as nginx's
``client_header_timeout`` does. uvicorn takes it as ``uvicorn.Config(http=...)``.
"""

from __future__ import annotations

import asyncio
from typing import Any

TIMEOUT_BODY = b'{"error": "The request headers did not arrive in time: send them at once."}'
TIMEOUT_RESPONSE = (b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\nconnection: close\r\n"
                    b"content-length: " + str(len(TIMEOUT_BODY)).encode() + b"\r\n\r\n" + TIMEOUT_BODY)


class HeaderTimeoutMixin:
    """Adds the header timer to one of uvicorn's HTTP protocols (which keep the request being
    answered in ``self.cycle``; a new one is made once a request's headers are complete)."""

    header_timeout: float = 10.0

    def connection_made(self, transport: asyncio.Transport) -> None:
        super().connection_made(transport)
        self._header_timer: asyncio.TimerHandle | None = None
        self._arm()

    def data_received(self, data: bytes) -> None:
        if self._header_timer is None and self._between_requests():
            self._arm()  # the first byte of a new request on a kept-alive connection
        super().data_received(data)
        if self._header_timer is not None and not self._between_requests():
            self._disarm()  # the headers are complete: the body has its own limit (serve's body_timeout)

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _between_requests(self) -> bool:
        cycle = getattr(self, "cycle", None)
        return cycle is None or cycle.response_complete

    def _arm(self) -> None:
        self._header_timer = self.loop.call_later(self.header_timeout, self._headers_too_slow)

    def _disarm(self) -> None:
        if getattr(self, "_header_timer", None) is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _headers_too_slow(self) -> None:
        self._header_timer = None
        if self._between_requests() and not self.transport.is_closing():
            self.transport.write(TIMEOUT_RESPONSE)
            self.transport.close()


def protocol_with_header_timeout(seconds: float) -> type[Any]:
    """uvicorn's HTTP protocol class ("auto": httptools where installed, else h11) with a ``seconds``
    limit on each request's headers."""
    try:
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol as base
    except ImportError:  # httptools is not installed
        from uvicorn.protocols.http.h11_impl import H11Protocol as base
    return type(f"HeaderTimeout{base.__name__}", (HeaderTimeoutMixin, base), {"header_timeout": float(seconds)})
