"""A lean HTTP/1.1 client over raw asyncio streams, for load generation against 127.0.0.1.

Chosen over an HTTP library by measured client overhead per request (the load generator shares the
2-core machine with the service, so every client CPU-second is taken from the server): see
loadtest/README.md for the figures (aiohttp, httpx and this client driving the same service).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

HOST = "127.0.0.1"  # the only address these tools ever send traffic to


def build_request(method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None,
                  *, port: int = 80) -> bytes:
    """A raw HTTP/1.1 request (keep-alive), ``Content-Length`` set when there is a body."""
    lines = [f"{method} {path} HTTP/1.1", f"Host: {HOST}:{port}"]
    hdrs = {"content-type": "application/json"} if body is not None else {}
    hdrs.update({k.lower(): v for k, v in (headers or {}).items()})
    if body is not None and "transfer-encoding" not in hdrs:
        hdrs.setdefault("content-length", str(len(body)))
    lines += [f"{k}: {v}" for k, v in hdrs.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + (body or b"")



class HttpError(Exception):
    """The connection failed or closed before a complete response. ``nothing_received``: not one
    byte of a response arrived (on a reused keep-alive connection: the server had closed it, idle,
    and never read the request)."""

    def __init__(self, message: str, nothing_received: bool = False) -> None:
        super().__init__(message)
        self.nothing_received = nothing_received


@dataclass
class RawResponse:
    status: int
    headers: dict[str, str]
    body: bytes


class Conn:
    """One keep-alive HTTP/1.1 connection to 127.0.0.1 (raw asyncio streams: far cheaper than an HTTP
    library, so one process can offer several times what the service can take)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer, self.closed = reader, writer, False

    @classmethod
    async def open(cls, port: int, timeout: float = 5.0) -> "Conn":
        reader, writer = await asyncio.wait_for(asyncio.open_connection(HOST, port, limit=1 << 22), timeout)
        return cls(reader, writer)

    @property
    def stale(self) -> bool:
        """The server has closed this idle connection (EOF already seen)."""
        return self.closed or self.reader.at_eof() or self.writer.is_closing()

    async def send(self, raw: bytes, timeout: float = 60.0) -> RawResponse:
        head = b""
        try:
            self.writer.write(raw)
            async with asyncio.timeout(timeout):
                await self.writer.drain()
                head = await self.reader.readuntil(b"\r\n\r\n")
                status_line, *header_lines = head.decode("latin-1").split("\r\n")
                status = int(status_line.split(" ", 2)[1])
                headers: dict[str, str] = {}
                for line in header_lines:
                    if ":" in line:
                        k, v = line.split(":", 1)
                        headers[k.strip().lower()] = v.strip()
                if "content-length" in headers:
                    body = await self.reader.readexactly(int(headers["content-length"]))
                elif headers.get("transfer-encoding", "").lower() == "chunked":
                    body = await self._read_chunked()
                else:
                    body = await self.reader.read()
                    self.closed = True
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError, IndexError) as e:
            self.close()
            partial = getattr(e, "partial", b"")
            raise HttpError(f"{type(e).__name__}: {e}", nothing_received=not head and not partial) from None
        except TimeoutError:
            self.close()
            raise HttpError("TimeoutError") from None
        if headers.get("connection", "").lower() == "close":
            self.close()
        return RawResponse(status, headers, body)

    async def _read_chunked(self) -> bytes:
        parts = []
        while True:
            size = int((await self.reader.readuntil(b"\r\n")).split(b";")[0], 16)
            if size == 0:
                await self.reader.readuntil(b"\r\n")
                return b"".join(parts)
            parts.append(await self.reader.readexactly(size))
            await self.reader.readexactly(2)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            try:
                self.writer.close()
            except Exception:
                pass


async def request(port: int, method: str, path: str, body: bytes | None = None,
                  headers: dict[str, str] | None = None, timeout: float = 30.0) -> RawResponse:
    """One request on a fresh connection."""
    conn = await Conn.open(port)
    try:
        return await conn.send(build_request(method, path, body, headers, port=port), timeout)
    finally:
        conn.close()


