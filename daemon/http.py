"""HTTP/1.1 for the daemon's API: a sans-I/O request parser and a trio server.

    async def handler(request: Request) -> Response:
        return Response.json({"Path": request.path})

    server = HttpServer(handler, default_headers=[("Server", "cryo")])
    await nursery.start(server.serve_unix, "/run/cryo/cryo.sock")

Owns: turning bytes into requests (`RequestParser`: request line, header fields,
Content-Length and chunked bodies, size limits) and answering them on one connection
(`HttpServer`: keep-alive, pipelining, ``100 Continue``, response framing, streamed
bodies, idle timeouts, the unix and TCP listeners). RFC 9112 is the reference; the
section numbers in comments point into it.

Must not: know any route or anything Docker-specific (the router hands in a `Handler`),
interpret bodies beyond `Request.json`, or let one connection's failure reach another.
The parser half (everything above `HttpServer`) must not use trio: it takes bytes and
gives requests, so it is tested with plain bytes.
"""

from __future__ import annotations

import contextlib
import email.utils
import errno
import json
import os
import re
import stat
import sys
import time
import traceback
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from enum import Enum, auto
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import trio

__all__ = ["Handler", "HttpError", "HttpServer", "Request", "RequestParser", "Response"]


class HttpError(Exception):
    """A request that gets `status` instead of an answer; the body is ``{"message": ...}``.

    Raised by the parser for malformed input and by handlers for refusals (404, 409, …).
    """

    def __init__(self, status: int, message: str, headers: Sequence[tuple[str, str]] = ()) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = list(headers)


@dataclass
class Request:
    """One complete request, body included."""

    method: str  # upper-case
    target: str  # the request-target exactly as sent
    path: str  # percent-decoded, without the query
    query: dict[str, list[str]]  # blank values kept, as Docker's Go server keeps them
    headers: list[tuple[str, str]]  # names lower-cased, in the order received
    body: bytes
    version: str = "HTTP/1.1"  # "HTTP/1.0" or "HTTP/1.1"

    def header(self, name: str) -> str | None:
        """The last value of header `name` (any case), or None."""
        wanted = name.lower()
        found = None
        for header_name, value in self.headers:
            if header_name == wanted:
                found = value
        return found

    def query_value(self, name: str) -> str | None:
        """The last value of query parameter `name`, or None."""
        values = self.query.get(name)
        return values[-1] if values else None

    def json(self) -> Any:
        """The body decoded as JSON; None when there is no body (Docker allows that)."""
        if not self.body.strip():
            return None
        try:
            return json.loads(self.body)
        except ValueError as error:  # JSONDecodeError and UnicodeDecodeError
            raise HttpError(400, f"invalid JSON body: {error}") from None


@dataclass
class Response:
    """What a handler answers. With `stream` set, `body` is ignored and each item the
    iterator yields goes to the client as one chunk as soon as it is produced."""

    status: int
    body: bytes = b""
    content_type: str | None = None
    headers: list[tuple[str, str]] = field(default_factory=list)
    stream: AsyncIterator[bytes] | None = None
    upgrade: str | None = None  # see `Response.upgraded`

    @classmethod
    def upgraded(
        cls, protocol: str, stream: AsyncIterator[bytes], content_type: str | None = None
    ) -> Response:
        """101 Switching Protocols to *protocol*, then the connection is a raw byte
        stream: each item as it comes, no chunked coding, and the server closes its
        side when the iterator ends (Docker's attach: `Upgrade: tcp`). What the client
        sends after the switch is read and dropped; its half-close is not a hang-up."""
        return cls(101, content_type=content_type, stream=stream, upgrade=protocol)

    @classmethod
    def json(cls, obj: Any, status: int = 200, headers: Sequence[tuple[str, str]] = ()) -> Response:
        """Compact JSON ending in a newline, as Go's json.Encoder writes it for Docker."""
        text = json.dumps(obj, separators=(",", ":"), ensure_ascii=False) + "\n"
        return cls(status, text.encode(), "application/json", list(headers))

    @classmethod
    def empty(cls, status: int = 204, headers: Sequence[tuple[str, str]] = ()) -> Response:
        return cls(status, headers=list(headers))


Handler = Callable[[Request], Awaitable[Response]]

# --- the parser: bytes in, requests out, no I/O ---------------------------------------

_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")  # §5.1 field-name, §3.1 method
_TARGET = re.compile(rb"[\x21-\x7e]+")  # printable ASCII, no spaces (§3.2)
_HTTP_1 = re.compile(rb"HTTP/1\.([0-9])")
_HTTP_OTHER_MAJOR = re.compile(rb"HTTP/[02-9](?:\.[0-9])?")  # well-formed, just not 1.x
# Bytes that can start a valid request line, so garbage (a TLS hello, a stray binary
# protocol) is refused at its first read instead of after the header limit fills up.
_REQUEST_LINE_PREFIX = re.compile(
    rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]*(?: [\x21-\x7e]*(?: [\x21-\x7e]*)?)?\r?"
)
# §2.2 lets a recipient accept a bare LF as a line terminator; curl and Go never send
# one, but hand-typed requests (nc, socat) do.
_HEAD_END = re.compile(rb"\r?\n\r?\n")
_LINE_BREAK = re.compile(rb"\r?\n")
_BAD_VALUE_BYTE = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")  # §5.5: no controls but HTAB
_DIGITS = re.compile(r"[0-9]+")  # not str.isdigit: that accepts "²", which int() refuses
_CHUNK_SIZE_LINE = re.compile(rb"([0-9A-Fa-f]+)[ \t]*(?:;.*)?")  # §7.1.1: extensions ignored
_MAX_CHUNK_LINE_BYTES = 4096


class _Phase(Enum):
    HEAD = auto()  # waiting for the request line and header fields
    FIXED_BODY = auto()  # Content-Length bytes still to come (possibly zero)
    CHUNK_SIZE = auto()  # waiting for a chunk-size line
    CHUNK_DATA = auto()  # inside a chunk
    CHUNK_END = auto()  # waiting for the CRLF that closes a chunk
    TRAILERS = auto()  # after the last chunk, until an empty line


class _Continue(Enum):
    NOT_EXPECTED = auto()
    EXPECTED = auto()  # the client waits for "100 Continue" before sending its body
    SENT = auto()


class RequestParser:
    """Bytes in, `Request` objects out, for one connection (RFC 9112); no I/O.

    Theory of operation: a request is a head (the request line and header fields, up to
    an empty line) followed by a body framed by Content-Length, by the chunked coding, or
    absent. Unread bytes wait in one buffer; `next_request` walks the phases of `_Phase`
    as far as the buffer allows and returns a request as soon as its body is complete,
    keeping the bytes after it (a pipelined request) for the next call. Every error is
    final: once framing is in doubt nobody knows where the next request starts, so the
    parser raises the same `HttpError` again and the server must close the connection.
    """

    def __init__(
        self, *, max_header_bytes: int = 64 * 1024, max_body_bytes: int = 16 * 1024 * 1024
    ) -> None:
        self._max_header_bytes = max_header_bytes
        self._max_body_bytes = max_body_bytes
        self._buffer = bytearray()
        self._head_scan_from = 0  # where to resume looking for the end of the head
        self._phase = _Phase.HEAD
        self._pending: Request | None = None  # the head of the request being read
        self._body = bytearray()
        self._remaining = 0  # bytes left in the Content-Length body or the current chunk
        self._trailer_bytes = 0
        self._continue = _Continue.NOT_EXPECTED
        self._failure: HttpError | None = None

    def feed(self, data: bytes | bytearray) -> None:
        """Add bytes received from the client."""
        if self._failure is None:
            self._buffer += data

    def next_request(self) -> Request | None:
        """The next complete request, or None until more bytes are fed."""
        if self._failure is not None:
            raise self._failure
        try:
            return self._advance()
        except HttpError as error:
            self._failure = error
            self._buffer.clear()
            raise

    @property
    def wants_continue(self) -> bool:
        """The client sent ``Expect: 100-continue`` and waits for a go-ahead (§9.1 of
        RFC 9110) before its body; the server sends it, then calls `continue_sent`."""
        return self._continue is _Continue.EXPECTED

    def continue_sent(self) -> None:
        if self._continue is _Continue.EXPECTED:
            self._continue = _Continue.SENT

    def _advance(self) -> Request | None:
        while True:
            if self._phase is _Phase.HEAD:
                if not self._read_head():
                    return None
            elif self._phase is _Phase.FIXED_BODY:
                self._take_body_bytes()
                return None if self._remaining else self._finish()
            elif self._phase is _Phase.CHUNK_SIZE:
                line = self._take_line(_MAX_CHUNK_LINE_BYTES, 400, "chunk size line too long")
                if line is None:
                    return None
                self._start_chunk(line)
            elif self._phase is _Phase.CHUNK_DATA:
                self._take_body_bytes()
                if self._remaining:
                    return None
                self._phase = _Phase.CHUNK_END
            elif self._phase is _Phase.CHUNK_END:
                line = self._take_line(0, 400, "chunk data longer than its declared size")
                if line is None:
                    return None
                self._phase = _Phase.CHUNK_SIZE
            else:  # TRAILERS: read and dropped; nothing in this API looks at them
                line = self._take_line(self._max_header_bytes, 431, "trailer section too large")
                if line is None:
                    return None
                if not line:
                    return self._finish()
                self._trailer_bytes += len(line) + 2
                if self._trailer_bytes > self._max_header_bytes:
                    raise HttpError(431, "trailer section too large")

    def _read_head(self) -> bool:
        # §2.2: a server should ignore empty lines before a request line (some clients
        # send an extra CRLF after a body).
        while self._buffer.startswith((b"\n", b"\r\n")):
            del self._buffer[: self._buffer.index(b"\n") + 1]
        end = _HEAD_END.search(self._buffer, self._head_scan_from)
        if end is None:
            self._check_request_line_so_far()
            if len(self._buffer) > self._max_header_bytes:
                raise HttpError(431, "request header fields too large")
            # A terminator split across reads starts at most 3 bytes before the end.
            self._head_scan_from = max(0, len(self._buffer) - 3)
            return False
        if end.end() > self._max_header_bytes:
            raise HttpError(431, "request header fields too large")
        lines = _LINE_BREAK.split(bytes(self._buffer[: end.start()]))
        del self._buffer[: end.end()]
        self._head_scan_from = 0

        method, target, version = _parse_request_line(lines[0])
        headers = [_parse_header_line(line) for line in lines[1:]]
        if version == "HTTP/1.1" and sum(name == "host" for name, _ in headers) != 1:
            raise HttpError(400, "an HTTP/1.1 request needs exactly one Host header")  # §3.2
        path, query = _split_target(method, target)
        self._pending = Request(method, target, path, query, headers, b"", version)
        self._phase, self._remaining = self._body_framing(headers)

        expectations = [value.lower() for name, value in headers if name == "expect"]
        if expectations and version == "HTTP/1.1":  # HTTP/1.0 clients cannot expect
            if expectations != ["100-continue"]:
                raise HttpError(417, f"unsupported expectation: {', '.join(expectations)}")
            if self._phase is not _Phase.FIXED_BODY or self._remaining:
                self._continue = _Continue.EXPECTED
        return True

    def _check_request_line_so_far(self) -> None:
        line_end = self._buffer.find(b"\n")
        if line_end < 0:
            if _REQUEST_LINE_PREFIX.fullmatch(self._buffer) is None:
                raise HttpError(400, "malformed request line")
        else:
            _parse_request_line(_strip_cr(bytes(self._buffer[:line_end])))

    def _body_framing(self, headers: list[tuple[str, str]]) -> tuple[_Phase, int]:
        """How the body is delimited (§6.3), and its length when it is fixed."""
        codings = [
            coding.strip().lower()
            for name, value in headers
            if name == "transfer-encoding"
            for coding in value.split(",")
            if coding.strip()
        ]
        lengths = [
            part.strip()
            for name, value in headers
            if name == "content-length"
            for part in value.split(",")
        ]
        has_transfer_encoding = any(name == "transfer-encoding" for name, _ in headers)
        if has_transfer_encoding:
            # Both at once is how request smuggling starts (§6.1): refuse, do not guess.
            if lengths:
                raise HttpError(400, "both Content-Length and Transfer-Encoding")
            for coding in codings:
                if coding != "chunked":
                    raise HttpError(501, f"unsupported transfer coding: {coding}")
            if codings != ["chunked"]:
                raise HttpError(400, "chunked must be applied exactly once")
            return _Phase.CHUNK_SIZE, 0
        if not lengths:
            return _Phase.FIXED_BODY, 0
        if not all(_DIGITS.fullmatch(part) for part in lengths):
            raise HttpError(400, "invalid Content-Length")
        if len({part.lstrip("0") for part in lengths}) > 1:
            raise HttpError(400, "conflicting Content-Length values")
        # Length check on the digits first: int() refuses strings over 4300 digits.
        if len(lengths[0].lstrip("0")) > 18 or int(lengths[0]) > self._max_body_bytes:
            raise self._body_too_large()
        return _Phase.FIXED_BODY, int(lengths[0])

    def _start_chunk(self, line: bytes) -> None:
        match = _CHUNK_SIZE_LINE.fullmatch(line)
        if match is None:
            raise HttpError(400, "malformed chunk size line")
        digits = match.group(1).lstrip(b"0")
        if len(digits) > 15:
            raise self._body_too_large()
        size = int(digits or b"0", 16)
        if size == 0:
            self._phase = _Phase.TRAILERS
            return
        # Refused when announced, before any of it is buffered.
        if len(self._body) + size > self._max_body_bytes:
            raise self._body_too_large()
        self._phase, self._remaining = _Phase.CHUNK_DATA, size

    def _body_too_large(self) -> HttpError:
        return HttpError(413, f"request body too large (limit {self._max_body_bytes} bytes)")

    def _take_body_bytes(self) -> None:
        count = min(self._remaining, len(self._buffer))
        self._body += self._buffer[:count]
        del self._buffer[:count]
        self._remaining -= count

    def _take_line(self, limit: int, status: int, message: str) -> bytes | None:
        """One line of at most `limit` bytes without its terminator, or None if it is
        not all here yet."""
        end = self._buffer.find(b"\n", 0, limit + 2)
        if end < 0:
            if len(self._buffer) > limit + 1:
                raise HttpError(status, message)
            return None
        line = _strip_cr(bytes(self._buffer[:end]))
        if len(line) > limit:
            raise HttpError(status, message)
        del self._buffer[: end + 1]
        return line

    def _finish(self) -> Request:
        request = self._pending
        assert request is not None, "a body phase always follows a parsed head"
        request.body = bytes(self._body)
        self._pending = None
        self._body = bytearray()
        self._phase = _Phase.HEAD
        self._trailer_bytes = 0
        self._continue = _Continue.NOT_EXPECTED
        return request


def _strip_cr(line: bytes) -> bytes:
    return line[:-1] if line.endswith(b"\r") else line


def _parse_request_line(line: bytes) -> tuple[str, str, str]:
    """§3: method SP request-target SP HTTP-version, with single spaces."""
    parts = line.split(b" ")
    if len(parts) != 3 or not _TOKEN.fullmatch(parts[0]) or not _TARGET.fullmatch(parts[1]):
        raise HttpError(400, "malformed request line")
    method, target, version = parts
    minor = _HTTP_1.fullmatch(version)
    if minor is None:
        if _HTTP_OTHER_MAJOR.fullmatch(version):  # an HTTP/2 preface ends up here
            raise HttpError(505, f"HTTP version not supported: {version.decode()}")
        raise HttpError(400, "malformed HTTP version")
    # RFC 9110 §6.2: a later 1.x minor version is answered as the highest one we know.
    normalised = "HTTP/1.0" if minor.group(1) == b"0" else "HTTP/1.1"
    return method.decode().upper(), target.decode(), normalised


def _parse_header_line(line: bytes) -> tuple[str, str]:
    if line.startswith((b" ", b"\t")):
        raise HttpError(400, "obsolete header line folding")  # §5.2 allows refusing it
    name, colon, value = line.partition(b":")
    # No whitespace before the colon (§5.1): it has been used to smuggle requests.
    if not colon or not _TOKEN.fullmatch(name):
        raise HttpError(400, "malformed header line")
    value = value.strip(b" \t")
    if _BAD_VALUE_BYTE.search(value):
        raise HttpError(400, "control character in header value")
    return name.decode().lower(), value.decode("latin-1")


def _split_target(method: str, target: str) -> tuple[str, dict[str, list[str]]]:
    if target.startswith("/"):  # origin-form, what every client here sends
        raw_path, _, raw_query = target.partition("?")
    elif target == "*" and method == "OPTIONS":
        raw_path, raw_query = "*", ""
    elif "://" in target:  # absolute-form, which §3.2.2 obliges servers to accept
        parts = urlsplit(target)
        raw_path, raw_query = parts.path or "/", parts.query
    else:
        raise HttpError(400, "malformed request target")
    return unquote(raw_path), parse_qs(raw_query, keep_blank_values=True)


def _client_wants_keep_alive(request: Request) -> bool:
    """§9.3: persistent by default in HTTP/1.1, only on request in HTTP/1.0."""
    options = {
        option.strip().lower()
        for name, value in request.headers
        if name == "connection"
        for option in value.split(",")
    }
    if "close" in options:
        return False
    return request.version == "HTTP/1.1" or "keep-alive" in options


def _header_problem(name: str, value: str) -> str | None:
    """Why a response header cannot be sent as it is, or None when it can."""
    if not _TOKEN.fullmatch(name.encode("latin-1", "replace")):
        return f"invalid response header name {name!r}"
    try:
        encoded = value.encode("latin-1")
    except UnicodeEncodeError:
        return f"response header {name} is not latin-1"
    if _BAD_VALUE_BYTE.search(encoded):  # a CR or LF here would split the response
        return f"control character in response header {name}"
    return None


def _response_problem(response: Response) -> str | None:
    """Why a handler's response cannot be sent, or None when it can."""
    if response.upgrade is not None:
        if response.status != 101 or response.stream is None:
            return "an upgrade is a 101 response with a stream"
        if _header_problem("Upgrade", response.upgrade) is not None:
            return f"bad upgrade protocol {response.upgrade!r}"
    elif not 200 <= response.status <= 599:  # 1xx are the server's to send, not a handler's
        return f"response status {response.status} out of range"
    headers = list(response.headers)
    if response.content_type is not None:
        headers.append(("Content-Type", response.content_type))
    problems = (_header_problem(name, value) for name, value in headers)
    return next((problem for problem in problems if problem is not None), None)


def _render_head(status: int, headers: Sequence[tuple[str, str]]) -> bytes:
    try:
        reason = HTTPStatus(status).phrase
    except ValueError:
        reason = ""
    lines = [f"HTTP/1.1 {status} {reason}", *(f"{name}: {value}" for name, value in headers)]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


# --- the server: one trio task per connection -------------------------------------------

_RECEIVE_SIZE = 64 * 1024
# How long a closing connection keeps reading (and discarding) what the client still
# sends. Closing a socket with unread input makes the kernel send a reset, and the client
# may then lose the response it has not read yet — the 413 it is meant to see.
_LINGER_SECONDS = 2.0
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
# The server writes these itself: they describe how this connection frames the body.
_FRAMING_HEADERS = frozenset({"content-length", "transfer-encoding", "connection"})


def _log_to_stderr(message: str) -> None:
    print(message, file=sys.stderr)


class HttpServer:
    """Serves `handler` over HTTP/1.1, one task per connection, requests in order."""

    def __init__(
        self,
        handler: Handler,
        *,
        default_headers: Sequence[tuple[str, str]] = (),
        max_header_bytes: int = 64 * 1024,
        max_body_bytes: int = 16 * 1024 * 1024,
        idle_timeout: float = 300.0,
        log: Callable[[str], None] | None = None,
        access_log: Callable[[str], None] | None = None,
    ) -> None:
        for name, value in default_headers:
            problem = _header_problem(name, value)
            if problem is not None:
                raise ValueError(problem)
        self._handler = handler
        self._default_headers = list(default_headers)
        self._max_header_bytes = max_header_bytes
        self._max_body_bytes = max_body_bytes
        self._idle_timeout = idle_timeout
        self._log = log if log is not None else _log_to_stderr
        # One line a request, when it has been answered: "POST /path → 201 (3.1 ms)".
        self._access_log = access_log

    async def serve_unix(
        self,
        path: str | os.PathLike[str],
        *,
        mode: int = 0o660,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Listen on a unix socket at `path` until cancelled, then remove it."""
        socket_path = os.fspath(path)
        await _remove_stale_socket(socket_path)
        sock = trio.socket.socket(trio.socket.AF_UNIX, trio.socket.SOCK_STREAM)
        try:
            await sock.bind(socket_path)
            bound = os.stat(socket_path)
            try:
                # chmod before listen(): until then every connect() is refused, so no
                # client gets in under the looser mode the umask gave the file.
                os.chmod(socket_path, mode)
                sock.listen()
                task_status.started()
                await trio.serve_listeners(self.handle_connection, [trio.SocketListener(sock)])
            finally:
                _unlink_if_still_ours(socket_path, bound)
        finally:
            sock.close()

    async def serve_tcp(
        self, host: str, port: int, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Listen on `host`:`port` until cancelled; `started` gets the bound port (with
        port 0 give one address, such as 127.0.0.1, or each family gets its own port)."""
        listeners = await trio.open_tcp_listeners(port, host=host)
        try:
            task_status.started(listeners[0].socket.getsockname()[1])
            await trio.serve_listeners(self.handle_connection, listeners)
        finally:
            for listener in listeners:
                listener.socket.close()

    async def handle_connection(self, stream: trio.abc.Stream) -> None:
        """Answer requests on `stream` until either side closes it; never raises but
        `Cancelled`."""
        parser = RequestParser(
            max_header_bytes=self._max_header_bytes, max_body_bytes=self._max_body_bytes
        )
        try:
            await self._serve_requests(stream, parser)
        except trio.BrokenResourceError:
            pass  # the client hung up while we were talking to it; there is nobody to tell
        except Exception as error:  # a bug here must end this connection, not the server
            self._log("HTTP connection failed:\n" + "".join(traceback.format_exception(error)))
        finally:
            await trio.aclose_forcefully(stream)

    async def _serve_requests(self, stream: trio.abc.Stream, parser: RequestParser) -> None:
        while True:
            try:
                request = parser.next_request()
            except HttpError as error:
                # The position in the byte stream is lost: answer, then hang up.
                await self._send_response(
                    stream, parser, None, _error_response(error), keep_alive=False
                )
                await self._linger(stream)
                return
            if request is None:
                if parser.wants_continue:
                    parser.continue_sent()
                    await stream.send_all(_CONTINUE)
                data: bytes | bytearray | None = None
                with trio.move_on_after(self._idle_timeout):
                    data = await stream.receive_some(_RECEIVE_SIZE)
                if not data:
                    # Idle for too long (None) or the client closed (b""), maybe half-way
                    # through a request: either way there is nobody waiting for an answer.
                    return
                parser.feed(data)
                continue
            began = time.monotonic()
            response = await self._call_handler(request)
            handler_closes = any(
                name.lower() == "connection" and "close" in value.lower()
                for name, value in response.headers
            )
            keep_alive = _client_wants_keep_alive(request) and not handler_closes
            carry_on = await self._send_response(
                stream, parser, request, response, keep_alive=keep_alive
            )
            if self._access_log is not None:
                took = (time.monotonic() - began) * 1000
                self._access_log(
                    f"{request.method} {request.target} → {response.status} ({took:.1f} ms)"
                )
            if not carry_on:
                await self._linger(stream)
                return

    async def _call_handler(self, request: Request) -> Response:
        try:
            response = await self._handler(request)
            problem = _response_problem(response)
            if problem is not None:
                if response.stream is not None:
                    await self._close_stream(response.stream)
                raise ValueError(problem)
        except HttpError as error:
            return _error_response(error)
        except Exception as error:  # not BaseException: trio.Cancelled must propagate
            self._log(
                f"{request.method} {request.target} failed:\n"
                + "".join(traceback.format_exception(error))
            )
            message = f"internal error: {type(error).__name__}: {error}"
            return Response.json({"message": message}, status=500)
        return response

    async def _send_response(
        self,
        stream: trio.abc.Stream,
        parser: RequestParser,
        request: Request | None,
        response: Response,
        *,
        keep_alive: bool,
    ) -> bool:
        """Write `response`; True when the connection can carry another request."""
        if response.upgrade is not None and response.stream is not None:
            await self._send_upgraded(stream, response, response.stream)
            return False
        is_head = request is not None and request.method == "HEAD"
        is_http10 = request is not None and request.version == "HTTP/1.0"
        has_body = response.status not in (204, 304)  # §6.3: these never have one
        chunks = response.stream if has_body else None
        if chunks is not None and is_http10:
            keep_alive = False  # HTTP/1.0 has no chunked coding: the close ends the body

        headers = self._content_headers(response)
        if chunks is not None:
            if not is_http10:
                headers.append(("Transfer-Encoding", "chunked"))
        elif has_body:  # HEAD too: §9.3.2 of RFC 9110, the length a GET would have had
            headers.append(("Content-Length", str(len(response.body))))
        headers.append(("Date", email.utils.formatdate(usegmt=True)))
        if not keep_alive:
            headers.append(("Connection", "close"))
        elif is_http10:
            headers.append(("Connection", "keep-alive"))
        head = _render_head(response.status, headers)

        if chunks is None or is_head:
            if response.stream is not None:
                await self._close_stream(response.stream)
            body = response.body if has_body and not is_head else b""
            await stream.send_all(head + body)
            return keep_alive
        sent_whole_body = await self._send_stream(
            stream, parser, head, chunks, chunked=not is_http10
        )
        return sent_whole_body and keep_alive

    def _content_headers(self, response: Response) -> list[tuple[str, str]]:
        """The default headers, those the handler set (which replace defaults of the same
        name) and its Content-Type; never the framing headers, which are the server's."""
        own = [(n, v) for n, v in response.headers if n.lower() not in _FRAMING_HEADERS]
        if response.content_type is not None:
            own.append(("Content-Type", response.content_type))
        own_names = {name.lower() for name, _ in own}
        return [(n, v) for n, v in self._default_headers if n.lower() not in own_names] + own

    async def _send_upgraded(
        self, stream: trio.abc.Stream, response: Response, chunks: AsyncIterator[bytes]
    ) -> None:
        headers = self._content_headers(response)
        headers += [("Connection", "Upgrade"), ("Upgrade", str(response.upgrade))]
        head = _render_head(101, headers)
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._drain_client, stream)
                sent = await self._pump_chunks(stream, head, chunks, chunked=False)
                if sent and isinstance(stream, trio.abc.HalfCloseableStream):
                    with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                        await stream.send_eof()
                nursery.cancel_scope.cancel()
        finally:
            await self._close_stream(chunks)

    async def _drain_client(self, stream: trio.abc.Stream) -> None:
        # After the switch the client may half-close (no stdin) or send bytes nobody
        # reads here; neither ends the stream going the other way.
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            while await stream.receive_some(_RECEIVE_SIZE):
                pass
        await trio.sleep_forever()

    async def _send_stream(
        self,
        stream: trio.abc.Stream,
        parser: RequestParser,
        head: bytes,
        chunks: AsyncIterator[bytes],
        *,
        chunked: bool,
    ) -> bool:
        """Send `head`, then each item of `chunks` as it comes; True when all was sent.

        Reads from the client at the same time, so a client that hangs up is noticed
        even while the stream waits a long time for its next item (``docker events``).
        """
        sent_whole_body = False
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._watch_for_hangup, stream, parser, nursery.cancel_scope)
                sent_whole_body = await self._pump_chunks(stream, head, chunks, chunked=chunked)
                nursery.cancel_scope.cancel()
        finally:
            await self._close_stream(chunks)
        return sent_whole_body

    async def _pump_chunks(
        self, stream: trio.abc.Stream, head: bytes, chunks: AsyncIterator[bytes], *, chunked: bool
    ) -> bool:
        try:
            await stream.send_all(head)
            async for chunk in chunks:
                if not chunk:
                    continue  # an empty chunk would read as the end of the body (§7.1)
                await stream.send_all(b"%x\r\n%b\r\n" % (len(chunk), chunk) if chunked else chunk)
            if chunked:
                await stream.send_all(b"0\r\n\r\n")
        except trio.BrokenResourceError:
            return False
        except Exception as error:
            # The status is already out, so the only way left to say "this failed" is to
            # stop without the last chunk: the client then knows the body is incomplete.
            self._log("response stream failed:\n" + "".join(traceback.format_exception(error)))
            return False
        return True

    async def _watch_for_hangup(
        self, stream: trio.abc.Stream, parser: RequestParser, streaming: trio.CancelScope
    ) -> None:
        received = 0
        while received < self._max_header_bytes:
            try:
                data = await stream.receive_some(_RECEIVE_SIZE)
            except trio.BrokenResourceError:
                data = b""
            if not data:
                streaming.cancel()
                return
            parser.feed(data)  # a pipelined request: its turn comes after this response
            received += len(data)
        # A client pipelining this much can wait; the kernel's flow control holds the rest.
        await trio.sleep_forever()

    async def _close_stream(self, chunks: AsyncIterator[bytes]) -> None:
        aclose = getattr(chunks, "aclose", None)
        if aclose is None:
            return
        # Shielded, so a generator's `finally` runs even while the server is being
        # cancelled; bounded, so a cleanup that hangs cannot hold the server up.
        with trio.move_on_after(_LINGER_SECONDS, shield=True):
            try:
                await aclose()
            except Exception as error:
                self._log("closing a response stream failed: " + repr(error))

    async def _linger(self, stream: trio.abc.Stream) -> None:
        if isinstance(stream, trio.abc.HalfCloseableStream):
            await stream.send_eof()  # the client reads EOF and closes its side
        with trio.move_on_after(_LINGER_SECONDS):
            while await stream.receive_some(_RECEIVE_SIZE):
                pass


def _error_response(error: HttpError) -> Response:
    return Response.json({"message": error.message}, status=error.status, headers=error.headers)


async def _remove_stale_socket(path: str) -> None:
    """Remove a socket left behind by a server that died; refuse to remove anything
    else, or a socket that another server still answers on."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise FileExistsError(errno.EEXIST, "exists and is not a socket", path)
    with trio.socket.socket(trio.socket.AF_UNIX, trio.socket.SOCK_STREAM) as probe:
        try:
            await probe.connect(path)
        except OSError:
            os.unlink(path)  # nobody listening: stale
            return
    raise OSError(errno.EADDRINUSE, "another server is listening on this socket", path)


def _unlink_if_still_ours(path: str, bound: os.stat_result) -> None:
    try:
        current = os.lstat(path)
    except FileNotFoundError:
        return
    if (current.st_dev, current.st_ino) == (bound.st_dev, bound.st_ino):
        os.unlink(path)
