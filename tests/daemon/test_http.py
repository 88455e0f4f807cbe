"""daemon/http.py: the HTTP/1.1 the docker CLI, curl and http.client speak to the daemon.

Most tests talk raw bytes over a socketpair to `HttpServer.handle_connection`, reading
responses with a small strict client written here (not the server's parser, so the two
cannot agree on the same mistake). The last ones run the unix and TCP listeners with
stdlib `http.client` and curl, and a property test splits valid requests at random.
"""

from __future__ import annotations

import ast
import email.utils
import http.client
import inspect
import json
import os
import shutil
import socket
import stat
import tempfile
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st

import daemon.http as http_module
from daemon.http import HttpError, HttpServer, Request, RequestParser, Response

# --- a strict little client ---------------------------------------------------------------


@dataclass
class RawResponse:
    status: int
    headers: list[tuple[str, str]]  # names lower-cased
    body: bytes = b""

    def header(self, name: str) -> str | None:
        values = [value for header_name, value in self.headers if header_name == name]
        return values[-1] if values else None

    def count(self, name: str) -> int:
        return sum(header_name == name for header_name, _ in self.headers)

    def json(self) -> Any:
        return json.loads(self.body)


class RawClient:
    """The client end of one connection, reading exactly what the server sends."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.server_done = trio.Event()
        self._buffer = bytearray()

    async def send(self, data: bytes) -> None:
        await self.stream.send_all(data)

    async def _receive_more(self) -> None:
        data = await self.stream.receive_some(65536)
        if not data:
            raise EOFError(f"server closed the connection; unread: {bytes(self._buffer)!r}")
        self._buffer += data

    async def read_until(self, marker: bytes) -> bytes:
        while (index := self._buffer.find(marker)) < 0:
            await self._receive_more()
        data = bytes(self._buffer[: index + len(marker)])
        del self._buffer[: index + len(marker)]
        return data

    async def read_exactly(self, count: int) -> bytes:
        while len(self._buffer) < count:
            await self._receive_more()
        data = bytes(self._buffer[:count])
        del self._buffer[:count]
        return data

    async def read_head(self) -> RawResponse:
        lines = (await self.read_until(b"\r\n\r\n")).decode("latin-1").split("\r\n")[:-2]
        version, status, _reason = lines[0].split(" ", 2)
        assert version == "HTTP/1.1"
        headers = []
        for line in lines[1:]:
            name, value = line.split(":", 1)
            headers.append((name.lower(), value.strip()))
        return RawResponse(int(status), headers)

    async def read_chunk(self) -> bytes:
        """One chunk of a chunked body; b"" for the last one (trailers skipped)."""
        size = int((await self.read_until(b"\r\n"))[:-2].split(b";")[0], 16)
        if size == 0:
            while await self.read_until(b"\r\n") != b"\r\n":
                pass
            return b""
        data = await self.read_exactly(size)
        assert await self.read_exactly(2) == b"\r\n"
        return data

    async def read_response(self, *, method: str = "GET") -> RawResponse:
        response = await self.read_head()
        if method == "HEAD" or response.status in (204, 304) or response.status < 200:
            return response
        if response.header("transfer-encoding") == "chunked":
            while chunk := await self.read_chunk():
                response.body += chunk
        elif (length := response.header("content-length")) is not None:
            response.body = await self.read_exactly(int(length))
        else:
            response.body = await self.read_to_eof()
        return response

    async def read_to_eof(self) -> bytes:
        while True:
            try:
                await self._receive_more()
            except EOFError:
                break
        data = bytes(self._buffer)
        self._buffer.clear()
        return data

    async def expect_closed(self) -> None:
        assert await self.read_to_eof() == b""


@asynccontextmanager
async def connected(server: HttpServer) -> AsyncIterator[RawClient]:
    server_socket, client_socket = socket.socketpair()
    client = RawClient(trio.SocketStream(trio.socket.from_stdlib_socket(client_socket)))

    async def run_server() -> None:
        stream = trio.SocketStream(trio.socket.from_stdlib_socket(server_socket))
        await server.handle_connection(stream)
        client.server_done.set()

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(run_server)
            try:
                yield client
            finally:
                await client.stream.aclose()


def get(path: str, *headers: str, method: str = "GET", version: str = "HTTP/1.1") -> bytes:
    lines = [f"{method} {path} {version}", "Host: docker", *headers, "", ""]
    return "\r\n".join(lines).encode()


def post(path: str, body: bytes, *headers: str) -> bytes:
    return get(path, f"Content-Length: {len(body)}", *headers, method="POST") + body


class Recorder:
    """A handler that echoes each request as JSON and remembers it."""

    def __init__(self) -> None:
        self.requests: list[Request] = []

    async def __call__(self, request: Request) -> Response:
        self.requests.append(request)
        return Response.json(
            {
                "method": request.method,
                "path": request.path,
                "query": request.query,
                "body": request.body.decode("latin-1"),
                "version": request.version,
            }
        )


# --- keep-alive, pipelining, bodies ---------------------------------------------------------


async def test_keep_alive_serves_requests_in_order_on_one_connection() -> None:
    async with connected(HttpServer(Recorder())) as client:
        for path in ("/a", "/b", "/c"):
            await client.send(get(path))
            response = await client.read_response()
            assert response.json()["path"] == path
            assert response.header("connection") is None


async def test_connection_close_from_client_closes_after_the_response() -> None:
    async with connected(HttpServer(Recorder())) as client:
        await client.send(get("/_ping", "Connection: close"))
        response = await client.read_response()
        assert response.status == 200
        assert response.header("connection") == "close"
        await client.expect_closed()


@pytest.mark.parametrize(
    ("connection_header", "stays_open"), [(None, False), ("Connection: keep-alive", True)]
)
async def test_http10_closes_unless_it_asks_for_keep_alive(
    connection_header: str | None, stays_open: bool
) -> None:
    headers = [connection_header] if connection_header else []
    async with connected(HttpServer(Recorder())) as client:
        await client.send(get("/one", *headers, version="HTTP/1.0"))
        response = await client.read_response()
        assert response.json()["version"] == "HTTP/1.0"
        if stays_open:
            assert response.header("connection") == "keep-alive"
            await client.send(get("/two", *headers, version="HTTP/1.0"))
            assert (await client.read_response()).json()["path"] == "/two"
        else:
            assert response.header("connection") == "close"
            await client.expect_closed()


async def test_pipelined_requests_in_one_write_are_answered_in_order() -> None:
    recorder = Recorder()
    async with connected(HttpServer(recorder)) as client:
        await client.send(get("/first") + post("/second", b"hello") + get("/third"))
        answers = [(await client.read_response()).json() for _ in range(3)]
    assert [answer["path"] for answer in answers] == ["/first", "/second", "/third"]
    assert answers[1]["body"] == "hello"


async def test_body_arriving_in_pieces_reaches_the_handler_whole() -> None:
    async with connected(HttpServer(Recorder())) as client:
        await client.send(get("/upload", "Content-Length: 11", method="POST"))
        await trio.sleep(0.01)
        await client.send(b"hello ")
        await trio.sleep(0.01)
        await client.send(b"world")
        assert (await client.read_response()).json()["body"] == "hello world"


async def test_chunked_body_with_extensions_and_trailers() -> None:
    body = b"5;name=value\r\nhello\r\n6\r\n world\r\n0;last\r\nX-Checksum: abc\r\n\r\n"
    async with connected(HttpServer(Recorder())) as client:
        await client.send(get("/upload", "Transfer-Encoding: chunked", method="POST") + body)
        assert (await client.read_response()).json()["body"] == "hello world"
        await client.send(get("/next"))  # the trailers were consumed, not left behind
        assert (await client.read_response()).json()["path"] == "/next"


async def test_expect_100_continue_is_answered_before_the_body_is_sent() -> None:
    async with connected(HttpServer(Recorder())) as client:
        await client.send(
            get("/upload", "Content-Length: 4", "Expect: 100-continue", method="POST")
        )
        assert await client.read_until(b"\r\n\r\n") == b"HTTP/1.1 100 Continue\r\n\r\n"
        await client.send(b"data")
        response = await client.read_response()
        assert (response.status, response.json()["body"]) == (200, "data")


# --- refusals ----------------------------------------------------------------------------

HOST = "Host: docker\r\n"
REFUSED = {
    "both Content-Length and chunked": (
        f"POST / HTTP/1.1\r\n{HOST}Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
        400,
    ),
    "conflicting Content-Length headers": (
        f"POST / HTTP/1.1\r\n{HOST}Content-Length: 5\r\nContent-Length: 6\r\n\r\nhello",
        400,
    ),
    "conflicting Content-Length list": (
        f"POST / HTTP/1.1\r\n{HOST}Content-Length: 5, 6\r\n\r\nhello",
        400,
    ),
    "negative Content-Length": (f"POST / HTTP/1.1\r\n{HOST}Content-Length: -1\r\n\r\n", 400),
    "signed Content-Length": (f"POST / HTTP/1.1\r\n{HOST}Content-Length: +5\r\n\r\n", 400),
    "non-numeric Content-Length": (f"POST / HTTP/1.1\r\n{HOST}Content-Length: ab\r\n\r\n", 400),
    "superscript Content-Length": (f"POST / HTTP/1.1\r\n{HOST}Content-Length: ²\r\n\r\n", 400),
    "gzip transfer coding": (
        f"POST / HTTP/1.1\r\n{HOST}Transfer-Encoding: gzip\r\n\r\n",
        501,
    ),
    "gzip then chunked": (
        f"POST / HTTP/1.1\r\n{HOST}Transfer-Encoding: gzip, chunked\r\n\r\n",
        501,
    ),
    "chunked twice": (
        f"POST / HTTP/1.1\r\n{HOST}Transfer-Encoding: chunked, chunked\r\n\r\n",
        400,
    ),
    "malformed chunk size": (
        f"POST / HTTP/1.1\r\n{HOST}Transfer-Encoding: chunked\r\n\r\nzz\r\n",
        400,
    ),
    "chunk longer than its size": (
        f"POST / HTTP/1.1\r\n{HOST}Transfer-Encoding: chunked\r\n\r\n3\r\nabcd\r\n",
        400,
    ),
    "header block over the limit": (
        f"GET / HTTP/1.1\r\n{HOST}X-Big: {'x' * 2000}\r\n\r\n",
        431,
    ),
    "declared body over the limit": (
        f"POST / HTTP/1.1\r\n{HOST}Content-Length: 101\r\n\r\n",
        413,
    ),
    "chunked body over the limit": (
        f"POST / HTTP/1.1\r\n{HOST}Transfer-Encoding: chunked\r\n\r\n"
        f"40\r\n{'a' * 64}\r\n40\r\n{'b' * 64}\r\n0\r\n\r\n",
        413,
    ),
    "request line without version": ("GET /\r\n\r\n", 400),
    "request line with two spaces": (f"GET  / HTTP/1.1\r\n{HOST}\r\n", 400),
    "version without minor": (f"GET / HTTP/1\r\n{HOST}\r\n", 400),
    "lower-case version": (f"GET / http/1.1\r\n{HOST}\r\n", 400),
    "target not starting with a slash": (f"GET containers HTTP/1.1\r\n{HOST}\r\n", 400),
    "space before the colon": ("GET / HTTP/1.1\r\nHost : docker\r\n\r\n", 400),
    "header line without colon": (f"GET / HTTP/1.1\r\n{HOST}NoColon\r\n\r\n", 400),
    "folded header line": (f"GET / HTTP/1.1\r\n{HOST}X-A: a\r\n b\r\n\r\n", 400),
    "NUL in a header value": (f"GET / HTTP/1.1\r\n{HOST}X-A: a\x00b\r\n\r\n", 400),
    "HTTP/1.1 without Host": ("GET / HTTP/1.1\r\n\r\n", 400),
    "HTTP/2 preface": ("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 505),
    "HTTP/2.0 request line": (f"GET / HTTP/2.0\r\n{HOST}\r\n", 505),
    "HTTP/2.0 request line, head unfinished": ("GET / HTTP/2.0\r\n", 505),
    "TLS client hello": ("\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", 400),
    "unknown expectation": (f"POST / HTTP/1.1\r\n{HOST}Expect: 200-ok\r\n\r\n", 417),
}


@pytest.mark.parametrize(("raw", "status"), REFUSED.values(), ids=REFUSED.keys())
async def test_refused_request_gets_an_error_and_the_connection_closes(
    raw: str, status: int
) -> None:
    # The TLS hello and the HTTP/2 preface have no end of head that a parser could wait
    # for: they must be refused from their first bytes, or this test times out.
    recorder = Recorder()
    server = HttpServer(recorder, max_header_bytes=1024, max_body_bytes=100)
    async with connected(server) as client:
        await client.send(raw.encode("latin-1"))
        response = await client.read_response()
        assert response.status == status
        assert response.header("content-type") == "application/json"
        assert response.json()["message"]
        assert response.header("connection") == "close"
        await client.expect_closed()
    assert recorder.requests == []


# --- what every response carries -------------------------------------------------------------


async def test_responses_carry_length_date_and_default_headers() -> None:
    async def handler(request: Request) -> Response:
        if request.path == "/override":
            return Response.json({}, headers=[("Server", "special"), ("Content-Length", "999")])
        return Response.json({"Containers": 0})

    server = HttpServer(handler, default_headers=[("Api-Version", "1.41"), ("Server", "cryo")])
    async with connected(server) as client:
        await client.send(get("/info") + get("/override"))
        info = await client.read_response()
        assert info.header("content-length") == str(len(info.body))
        assert info.body == b'{"Containers":0}\n'
        assert email.utils.parsedate_to_datetime(info.header("date") or "").tzinfo is not None
        assert (info.header("api-version"), info.header("server")) == ("1.41", "cryo")

        override = await client.read_response()  # a handler's header wins over a default;
        assert override.count("server") == 1  # framing stays the server's own
        assert override.header("server") == "special"
        assert override.header("content-length") == "3"


async def test_head_gets_the_length_of_get_but_no_body() -> None:
    async def handler(request: Request) -> Response:
        return Response.json({"Name": "web", "State": "running"})

    async with connected(HttpServer(handler)) as client:
        await client.send(get("/c", method="HEAD") + get("/c"))
        head = await client.read_response(method="HEAD")
        full = await client.read_response()  # would misparse if HEAD had sent a body
        assert head.header("content-length") == str(len(full.body))
        assert full.json() == {"Name": "web", "State": "running"}


async def test_204_and_304_have_neither_body_nor_length() -> None:
    async def handler(request: Request) -> Response:
        if request.path == "/deleted":
            return Response.empty()
        if request.path == "/unchanged":
            return Response(304, body=b"never sent")
        return Response.json({"path": request.path})

    async with connected(HttpServer(handler)) as client:
        await client.send(get("/deleted") + get("/unchanged") + get("/after"))
        for status in (204, 304):
            response = await client.read_response()
            assert response.status == status
            assert response.header("content-length") is None
        assert (await client.read_response()).json() == {"path": "/after"}


# --- handler failures ----------------------------------------------------------------------


async def test_http_error_becomes_dockers_json_error_and_keeps_the_connection() -> None:
    async def handler(request: Request) -> Response:
        if request.path == "/containers/web/json":
            raise HttpError(404, "No such container: web", headers=[("X-Hint", "try ps")])
        return Response.json({})

    async with connected(HttpServer(handler)) as client:
        await client.send(get("/containers/web/json"))
        response = await client.read_response()
        assert response.status == 404
        assert response.json() == {"message": "No such container: web"}
        assert response.header("x-hint") == "try ps"
        await client.send(get("/_ping"))
        assert (await client.read_response()).status == 200


async def test_unexpected_exception_is_500_logged_and_serving_goes_on() -> None:
    logs: list[str] = []

    async def handler(request: Request) -> Response:
        if request.path == "/bug":
            raise KeyError("Config")
        return Response.json({"path": request.path})

    server = HttpServer(handler, log=logs.append)
    async with connected(server) as client:
        await client.send(get("/bug"))
        response = await client.read_response()
        assert response.status == 500
        assert response.json() == {"message": "internal error: KeyError: 'Config'"}
        await client.send(get("/same-connection"))
        assert (await client.read_response()).status == 200
    async with connected(server) as client:
        await client.send(get("/other-connection"))
        assert (await client.read_response()).status == 200
    assert len(logs) == 1
    assert "GET /bug" in logs[0] and "KeyError" in logs[0]


async def test_handler_header_with_a_line_break_cannot_split_the_response() -> None:
    async def handler(request: Request) -> Response:
        return Response.json({}, headers=[("X-Name", "a\r\nSet-Cookie: evil=1")])

    async with connected(HttpServer(handler, log=lambda message: None)) as client:
        await client.send(get("/"))
        response = await client.read_response()
        assert response.status == 500
        assert response.header("set-cookie") is None


async def test_cancellation_is_not_turned_into_a_500() -> None:
    logs: list[str] = []
    handler_started = trio.Event()

    async def handler(request: Request) -> Response:
        handler_started.set()
        await trio.sleep_forever()
        raise AssertionError("unreachable")

    server = HttpServer(handler, log=logs.append)
    server_socket, client_socket = socket.socketpair()
    client = RawClient(trio.SocketStream(trio.socket.from_stdlib_socket(client_socket)))
    with trio.fail_after(5):
        with trio.CancelScope() as scope:
            async with trio.open_nursery() as nursery:
                stream = trio.SocketStream(trio.socket.from_stdlib_socket(server_socket))
                nursery.start_soon(server.handle_connection, stream)
                await client.send(get("/wait"))
                await handler_started.wait()
                scope.cancel()
        assert scope.cancelled_caught
        await client.expect_closed()  # no response at all: the connection just ends
    assert logs == []


# --- streamed responses ------------------------------------------------------------------------


async def test_stream_chunks_arrive_as_they_are_produced() -> None:
    may_continue = trio.Event()

    async def events() -> AsyncIterator[bytes]:
        yield b'{"status":"start"}\n'
        await may_continue.wait()
        yield b""  # nothing to say yet; must not end the body
        yield b'{"status":"die"}\n'

    async def handler(request: Request) -> Response:
        if request.path == "/events":
            return Response(200, content_type="application/json", stream=events())
        return Response.json({"path": request.path})

    async with connected(HttpServer(handler)) as client:
        await client.send(get("/events"))
        head = await client.read_head()
        assert head.header("transfer-encoding") == "chunked"
        assert head.header("content-length") is None
        # The producer is still blocked on may_continue, so this chunk was flushed alone.
        assert await client.read_chunk() == b'{"status":"start"}\n'
        may_continue.set()
        assert await client.read_chunk() == b'{"status":"die"}\n'
        assert await client.read_chunk() == b""
        await client.send(get("/after"))
        assert (await client.read_response()).json() == {"path": "/after"}


class ChunksWithAclose:
    """An async iterator that is not a generator but can be closed."""

    def __init__(self) -> None:
        self.sent = False
        self.closed = trio.Event()

    def __aiter__(self) -> ChunksWithAclose:
        return self

    async def __anext__(self) -> bytes:
        if not self.sent:
            self.sent = True
            return b"one\n"
        await trio.sleep_forever()
        raise AssertionError("unreachable")

    async def aclose(self) -> None:
        self.closed.set()


class ChunksWithoutAclose:
    def __init__(self) -> None:
        self.sent = False
        self.closed = trio.Event()

    def __aiter__(self) -> ChunksWithoutAclose:
        return self

    async def __anext__(self) -> bytes:
        if not self.sent:
            self.sent = True
            return b"one\n"
        try:
            await trio.sleep_forever()
        finally:
            self.closed.set()  # the wait for the next item was cancelled
        raise AssertionError("unreachable")


@pytest.mark.parametrize("kind", ["generator", "iterator with aclose", "iterator without aclose"])
async def test_client_hanging_up_mid_stream_stops_the_stream(kind: str) -> None:
    generator_closed = trio.Event()

    async def follow_logs() -> AsyncIterator[bytes]:
        try:
            yield b"one\n"
            await trio.sleep_forever()
        finally:
            generator_closed.set()

    chunks: AsyncIterator[bytes]
    if kind == "generator":
        chunks, closed = follow_logs(), generator_closed
    else:
        iterator = ChunksWithAclose() if kind == "iterator with aclose" else ChunksWithoutAclose()
        chunks, closed = iterator, iterator.closed

    async def handler(request: Request) -> Response:
        if request.path == "/logs":
            return Response(200, stream=chunks)
        return Response.json({})

    logs: list[str] = []
    server = HttpServer(handler, log=logs.append)
    async with connected(server) as client:
        await client.send(get("/logs?follow=1"))
        await client.read_head()
        assert await client.read_chunk() == b"one\n"
        await client.stream.aclose()
        await closed.wait()
        await client.server_done.wait()
    async with connected(server) as client:  # the server itself is unharmed
        await client.send(get("/_ping"))
        assert (await client.read_response()).status == 200
    assert logs == []


async def test_stream_that_fails_midway_ends_without_the_last_chunk() -> None:
    async def broken() -> AsyncIterator[bytes]:
        yield b"partial"
        raise OSError("disk gone")

    async def handler(request: Request) -> Response:
        return Response(200, stream=broken())

    logs: list[str] = []
    async with connected(HttpServer(handler, log=logs.append)) as client:
        await client.send(get("/export"))
        await client.read_head()
        assert await client.read_chunk() == b"partial"
        await client.expect_closed()  # no "0\r\n\r\n": the client knows it is cut short
    assert "disk gone" in logs[0]


async def test_stream_to_http10_client_is_delimited_by_the_close() -> None:
    async def chunks() -> AsyncIterator[bytes]:
        yield b"a"
        yield b"b"

    async def handler(request: Request) -> Response:
        return Response(200, stream=chunks())

    async with connected(HttpServer(handler)) as client:
        await client.send(get("/stream", "Connection: keep-alive", version="HTTP/1.0"))
        response = await client.read_head()
        assert response.header("transfer-encoding") is None
        assert response.header("connection") == "close"
        assert await client.read_to_eof() == b"ab"


# --- idle and vanishing clients --------------------------------------------------------------


async def test_idle_connection_is_closed_after_the_timeout() -> None:
    async with connected(HttpServer(Recorder(), idle_timeout=0.3)) as client:
        await client.send(get("/one"))
        await client.read_response()
        started = trio.current_time()
        await client.expect_closed()
        assert trio.current_time() - started >= 0.25


@pytest.mark.parametrize(
    "partial_request",
    [
        b"GET /containers/js",
        b"POST /upload HTTP/1.1\r\nHost: docker\r\nContent-Length: 10\r\n\r\nabc",
    ],
    ids=["in the head", "in the body"],
)
async def test_client_hanging_up_mid_request_is_handled_quietly(partial_request: bytes) -> None:
    logs: list[str] = []
    recorder = Recorder()
    async with connected(HttpServer(recorder, log=logs.append)) as client:
        await client.send(partial_request)
        await client.stream.aclose()
        await client.server_done.wait()
    assert (recorder.requests, logs) == ([], [])


# --- the listeners, with real clients ------------------------------------------------------------


class UnixHTTPConnection(http.client.HTTPConnection):
    """http.client over a unix socket, the way docker-py reaches the daemon."""

    def __init__(self, socket_path: str) -> None:
        super().__init__("localhost", timeout=5)
        self.socket_path = socket_path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(self.socket_path)
        self.sock = sock


@pytest.fixture
def socket_dir() -> Iterator[Path]:
    # Not tmp_path: its long names can pass the 108-byte limit of a unix socket path.
    with tempfile.TemporaryDirectory(prefix="cryo-http-") as directory:
        yield Path(directory)


async def streaming_handler(request: Request) -> Response:
    async def lines() -> AsyncIterator[bytes]:
        for number in range(3):
            yield b"line %d\n" % number

    if request.path == "/stream":
        return Response(200, content_type="text/plain", stream=lines())
    return await Recorder()(request)


async def test_http_client_over_the_unix_socket(socket_dir: Path) -> None:
    path = socket_dir / "docker.sock"

    def talk() -> tuple[list[Any], bytes, bool]:
        connection = UnixHTTPConnection(str(path))
        answers = []
        connection.request("GET", "/v1.41/containers/json?all=1&filters=")
        answers.append(json.loads(connection.getresponse().read()))
        first_socket = connection.sock
        connection.request("POST", "/containers/create?name=web", body=b'{"Image":"busybox"}')
        answers.append(json.loads(connection.getresponse().read()))
        connection.request("GET", "/stream")
        streamed = connection.getresponse().read()
        reused = connection.sock is first_socket
        connection.close()
        return answers, streamed, reused

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            await nursery.start(partial(HttpServer(streaming_handler).serve_unix, path))
            answers, streamed, reused = await trio.to_thread.run_sync(talk)
            nursery.cancel_scope.cancel()
    assert answers[0]["path"] == "/v1.41/containers/json"
    assert answers[0]["query"] == {"all": ["1"], "filters": [""]}
    assert (answers[1]["method"], answers[1]["body"]) == ("POST", '{"Image":"busybox"}')
    assert streamed == b"line 0\nline 1\nline 2\n"
    assert reused  # one connection carried all three requests


async def test_unix_socket_gets_its_mode_and_is_removed_on_cancel(socket_dir: Path) -> None:
    path = socket_dir / "docker.sock"
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            await nursery.start(partial(HttpServer(Recorder()).serve_unix, path, mode=0o600))
            assert stat.S_ISSOCK(path.stat().st_mode)
            assert stat.S_IMODE(path.stat().st_mode) == 0o600
            nursery.cancel_scope.cancel()
    assert not path.exists()


async def test_stale_unix_socket_is_replaced(socket_dir: Path) -> None:
    path = socket_dir / "docker.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as dead_server:
        dead_server.bind(str(path))  # bound, closed, never unlinked: a crashed daemon
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            await nursery.start(partial(HttpServer(Recorder()).serve_unix, path))
            connection = UnixHTTPConnection(str(path))
            await trio.to_thread.run_sync(partial(connection.request, "GET", "/_ping"))
            response = await trio.to_thread.run_sync(connection.getresponse)
            assert response.status == 200
            connection.close()
            nursery.cancel_scope.cancel()


async def test_unix_server_refuses_to_replace_a_file_or_a_live_socket(socket_dir: Path) -> None:
    not_a_socket = socket_dir / "notes.txt"
    not_a_socket.write_text("keep me")
    with pytest.raises(FileExistsError):
        await HttpServer(Recorder()).serve_unix(not_a_socket)
    assert not_a_socket.read_text() == "keep me"

    path = socket_dir / "docker.sock"
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            await nursery.start(partial(HttpServer(Recorder()).serve_unix, path))
            with pytest.raises(OSError, match="another server is listening"):
                await HttpServer(Recorder()).serve_unix(path)
            assert path.exists()
            nursery.cancel_scope.cancel()


async def test_curl_over_the_unix_socket(socket_dir: Path) -> None:
    if shutil.which("curl") is None:
        if os.environ.get("CI") == "true":
            pytest.fail("curl is missing; scripts/setup-system.sh installs it")
        pytest.skip("curl is not installed")
    path = str(socket_dir / "docker.sock")
    curl = ["curl", "--silent", "--show-error", "--unix-socket", path]
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            await nursery.start(partial(HttpServer(streaming_handler).serve_unix, path))
            upload = await trio.run_process(
                [
                    *curl,
                    "--include",
                    "--header",
                    "Transfer-Encoding: chunked",
                    "--header",
                    "Expect: 100-continue",
                    "--data-binary",
                    "@-",
                    "http://localhost/containers/web/checkpoints",
                ],
                stdin=b'{"CheckpointID":"cp1"}',
                capture_stdout=True,
            )
            two_gets = await trio.run_process(
                [*curl, "--verbose", "http://localhost/stream", "http://localhost/_ping"],
                capture_stdout=True,
                capture_stderr=True,
            )
            nursery.cancel_scope.cancel()
    head, _, body = upload.stdout.decode().rpartition("\r\n\r\n")
    assert head.startswith("HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK")
    assert json.loads(body)["body"] == '{"CheckpointID":"cp1"}'
    assert two_gets.stdout.startswith(b"line 0\nline 1\nline 2\n{")
    assert b"Re-using existing connection" in two_gets.stderr


async def test_tcp_server_on_loopback() -> None:
    def ping(port: int) -> tuple[int, bytes]:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        connection.request("GET", "/_ping")
        response = connection.getresponse()
        result = response.status, response.read()
        connection.close()
        return result

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            port = await nursery.start(partial(HttpServer(Recorder()).serve_tcp, "127.0.0.1", 0))
            status, body = await trio.to_thread.run_sync(ping, port)
            nursery.cancel_scope.cancel()
    assert status == 200
    assert json.loads(body)["path"] == "/_ping"


async def test_oversized_upload_is_told_413_instead_of_being_reset() -> None:
    # The server stops reading at the declared length; if it then closed at once, the
    # kernel would reset the connection under the client's upload, and http.client would
    # raise in request() without ever seeing the 413.
    def upload(port: int) -> tuple[int, Any]:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        connection.request("POST", "/containers/create", body=b"x" * 4_000_000)
        response = connection.getresponse()
        result = response.status, json.loads(response.read())
        connection.close()
        return result

    server = HttpServer(Recorder(), max_body_bytes=1000)
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            port = await nursery.start(partial(server.serve_tcp, "127.0.0.1", 0))
            status, answer = await trio.to_thread.run_sync(upload, port)
            nursery.cancel_scope.cancel()
    assert status == 413
    assert answer == {"message": "request body too large (limit 1000 bytes)"}


# --- Request and Response on their own -------------------------------------------------------


def parse_one(raw: bytes) -> Request:
    parser = RequestParser()
    parser.feed(raw)
    request = parser.next_request()
    assert request is not None
    return request


def test_request_accessors() -> None:
    request = parse_one(
        b"POST /v1.41/containers/my%20app/checkpoints?dir=&dir=%2Ftmp&exit=1 HTTP/1.1\r\n"
        b"Host: docker\r\nX-Tag: one\r\nx-tag: two\r\nContent-Length: 2\r\n\r\n{}"
    )
    assert request.path == "/v1.41/containers/my app/checkpoints"
    assert request.query == {"dir": ["", "/tmp"], "exit": ["1"]}
    assert (request.query_value("dir"), request.query_value("missing")) == ("/tmp", None)
    assert (request.header("X-TAG"), request.header("missing")) == ("two", None)
    assert request.json() == {}


def test_request_json_of_an_empty_body_is_none_and_of_garbage_is_400() -> None:
    assert parse_one(b"GET / HTTP/1.1\r\nHost: d\r\n\r\n").json() is None
    garbage = parse_one(b"POST / HTTP/1.1\r\nHost: d\r\nContent-Length: 5\r\n\r\n{oops")
    with pytest.raises(HttpError) as raised:
        garbage.json()
    assert raised.value.status == 400
    assert raised.value.message.startswith("invalid JSON body: ")


def test_absolute_form_target_is_split_like_origin_form() -> None:
    request = parse_one(b"GET http://docker/_ping?x=1 HTTP/1.1\r\nHost: docker\r\n\r\n")
    assert (request.path, request.query) == ("/_ping", {"x": ["1"]})


def test_response_json_is_compact_and_newline_terminated_like_docker() -> None:
    response = Response.json({"Id": "abc", "Names": ["/web"], "Label": "café"}, status=201)
    assert response.status == 201
    assert response.content_type == "application/json"
    assert response.body == '{"Id":"abc","Names":["/web"],"Label":"café"}\n'.encode()
    assert Response.empty().status == 204
    assert Response.empty().body == b""


def test_parser_part_of_the_module_does_not_use_trio() -> None:
    source = inspect.getsource(http_module)
    tree = ast.parse(source)
    server_line = next(
        node.lineno
        for node in tree.body
        if isinstance(node, ast.ClassDef) and node.name == "HttpServer"
    )
    uses = [
        node.lineno
        for node in ast.walk(tree)
        if isinstance(node, ast.Name) and node.id == "trio" and node.lineno < server_line
    ]
    assert uses == []


# --- property: any split of valid requests parses the same ------------------------------------

SEGMENT = st.text(st.characters(codec="utf-8", exclude_characters="\x00"), min_size=1, max_size=8)
HEADER_NAME = st.text("abcdefghijklmnopqrstuvwxyzXYZ0123456789-_.!#~", min_size=1, max_size=10)
HEADER_VALUE = st.text(
    st.characters(min_codepoint=0x20, max_codepoint=0xFF, exclude_characters="\x7f"), max_size=20
).map(lambda value: value.strip(" "))
FRAMING = {"host", "content-length", "transfer-encoding", "expect", "connection"}


@st.composite
def valid_requests(draw: st.DrawFn) -> tuple[bytes, Request]:
    method = draw(st.sampled_from(["GET", "POST", "PUT", "DELETE", "HEAD"]))
    path = "/" + "/".join(draw(st.lists(SEGMENT, max_size=3)))
    pairs = draw(st.lists(st.tuples(SEGMENT, st.text(max_size=6)), max_size=3))
    target = quote(path) + ("?" + urlencode(pairs) if pairs else "")
    query: dict[str, list[str]] = {}
    for key, value in pairs:
        query.setdefault(key, []).append(value)

    extra_headers = draw(
        st.lists(
            st.tuples(HEADER_NAME, HEADER_VALUE).filter(lambda h: h[0].lower() not in FRAMING),
            max_size=4,
        )
    )
    headers = [("Host", "docker"), *extra_headers]
    body = draw(st.binary(max_size=300))
    framing = draw(st.sampled_from(["length", "chunked"] if body else ["none", "length"]))
    encoded_body = b""
    if framing == "length":
        headers.append(("Content-Length", str(len(body))))
        encoded_body = body
    elif framing == "chunked":
        headers.append(("Transfer-Encoding", "chunked"))
        cuts = sorted(draw(st.lists(st.integers(1, len(body)), max_size=4)))
        pieces = [
            body[start:end] for start, end in zip([0, *cuts], [*cuts, len(body)], strict=True)
        ]
        for piece in filter(None, pieces):
            extension = draw(st.sampled_from([b"", b";a=b", b' ; name="quoted"']))
            encoded_body += b"%x%b\r\n%b\r\n" % (len(piece), extension, piece)
        trailers = draw(st.lists(st.tuples(HEADER_NAME, HEADER_VALUE), max_size=2))
        encoded_body += b"0\r\n" + b"".join(f"{n}: {v}\r\n".encode("latin-1") for n, v in trailers)
        encoded_body += b"\r\n"

    head = f"{method} {target} HTTP/1.1\r\n"
    head += "".join(f"{name}: {value}\r\n" for name, value in headers) + "\r\n"
    expected = Request(
        method=method,
        target=target,
        path=path,
        query=query,
        headers=[(name.lower(), value) for name, value in headers],
        body=body,
    )
    return head.encode("latin-1") + encoded_body, expected


@settings(max_examples=150, deadline=None)
@given(
    requests=st.lists(valid_requests(), min_size=1, max_size=3),
    cut_fractions=st.lists(st.floats(0, 1), max_size=12),
)
def test_valid_requests_split_anywhere_parse_the_same(
    requests: list[tuple[bytes, Request]], cut_fractions: list[float]
) -> None:
    stream = b"".join(raw for raw, _ in requests)
    cuts = sorted({int(fraction * len(stream)) for fraction in cut_fractions})
    parser = RequestParser()
    parsed: list[Request] = []
    for start, end in zip([0, *cuts], [*cuts, len(stream)], strict=True):
        parser.feed(stream[start:end])
        while (request := parser.next_request()) is not None:
            parsed.append(request)
    assert parsed == [expected for _, expected in requests]


async def test_an_upgraded_connection_streams_raw_bytes_then_closes() -> None:
    # Docker's attach: 101 with Upgrade: tcp, then unframed bytes. The client's
    # half-close (it has no stdin to send) must not stop the output.
    may_finish = trio.Event()

    async def output() -> AsyncIterator[bytes]:
        yield b"\x01\x00\x00\x00\x00\x00\x00\x03hi\n"
        await may_finish.wait()
        yield b"\x02\x00\x00\x00\x00\x00\x00\x04err\n"

    async def handler(request: Request) -> Response:
        return Response.upgraded("tcp", output(), "application/vnd.docker.raw-stream")

    async with connected(HttpServer(handler, default_headers=[("Api-Version", "1.41")])) as client:
        await client.send(post("/containers/x/attach", b"", "Connection: Upgrade", "Upgrade: tcp"))
        head = await client.read_head()
        assert head.status == 101
        assert head.header("upgrade") == "tcp" and head.header("connection") == "Upgrade"
        assert head.header("api-version") == "1.41"
        assert head.header("transfer-encoding") is None and head.header("content-length") is None
        await client.stream.send_eof()
        assert await client.read_exactly(11) == b"\x01\x00\x00\x00\x00\x00\x00\x03hi\n"
        may_finish.set()
        assert await client.read_to_eof() == b"\x02\x00\x00\x00\x00\x00\x00\x04err\n"


async def test_only_an_upgrade_may_answer_101() -> None:
    async def handler(request: Request) -> Response:
        return Response(101)

    async with connected(HttpServer(handler, log=lambda message: None)) as client:
        await client.send(get("/x"))
        assert (await client.read_response()).status == 500


async def test_each_answered_request_gets_one_access_log_line() -> None:
    lines: list[str] = []
    server = HttpServer(Recorder(), access_log=lines.append)
    async with connected(server) as client:
        await client.send(get("/_ping") + post("/containers/x/checkpoints", b"{}"))
        assert (await client.read_response()).status == 200
        assert (await client.read_response()).status == 200
    assert [line.split(" (")[0] for line in lines] == [
        "GET /_ping → 200",
        "POST /containers/x/checkpoints → 200",
    ]
    assert all(line.endswith(" ms)") for line in lines)
