"""Received bytes → HTTP/2 frames, with each DATA payload copied once.

h2 keeps what it receives in one `bytearray`: every read is appended to it (moving
what is left of the previous frame when the buffer has to grow), each frame body is
sliced out of it (a copy) and hyperframe copies the slice again into the frame. For a
1 MiB message that is four copies of every byte before the gRPC layer sees it, and
fresh memory for most of them.

`ChunkedFrameBuffer` keeps the reads as they came, in a queue. A frame body that lies
within one read is handed to hyperframe as a view of it; one that spans reads is joined
once. An unpadded DATA frame gets its payload as bytes directly, so its bytes are copied
exactly once between the socket and the gRPC message decoder. Everything else — the
client preface check, the frame-size limit, CONTINUATION handling and the errors raised
— is h2's own `FrameBuffer` code, which this class inherits.

Pure: no I/O, no trio.
"""

from __future__ import annotations

import itertools
from collections import deque
from typing import Any

import h2.connection
import h2.exceptions
import h2.frame_buffer

# hyperframe's classes, as h2 itself uses them (wire/ imports only h2, hpack and trio).
_h2_names = vars(h2.frame_buffer)
Frame: Any = _h2_names["Frame"]
InvalidDataError: type[Exception] = _h2_names["InvalidDataError"]
InvalidFrameError: type[Exception] = _h2_names["InvalidFrameError"]
DataFrame: Any = vars(h2.connection)["DataFrame"]

FRAME_HEADER_LENGTH = 9
SMALL_READ = 4096  # reads shorter than this are merged with the one before


class ChunkedFrameBuffer(h2.frame_buffer.FrameBuffer):
    """h2's `FrameBuffer`, holding received bytes as a queue of the reads they came in."""

    def __init__(self, server: bool = False) -> None:
        super().__init__(server=server)
        self._chunks: deque[bytes] = deque()
        self._offset = 0  # bytes of _chunks[0] already parsed
        self._buffered = 0  # bytes received and not yet parsed

    @classmethod
    def install(cls, connection: h2.connection.H2Connection) -> None:
        """Make `connection` parse what it receives with this buffer (before any data)."""
        connection.incoming_buffer = cls(server=not connection.config.client_side)

    def add_data(self, data: Any) -> None:
        if self._preamble_len:
            # h2 checks the client preface and keeps whatever follows it.
            super().add_data(data)
            if self._data:
                self._append(bytes(self._data))
                self._data.clear()
            return
        self._append(data if type(data) is bytes else bytes(data))

    def __next__(self) -> Any:
        while True:
            if self._buffered < FRAME_HEADER_LENGTH:
                raise StopIteration
            first = self._chunks[0]
            start = self._offset
            in_first = len(first) - start
            if in_first >= FRAME_HEADER_LENGTH:
                header = first[start : start + FRAME_HEADER_LENGTH]
            else:
                header = self._peek(FRAME_HEADER_LENGTH)
            try:
                frame, length = Frame.parse_frame_header(memoryview(header))
            except (InvalidDataError, InvalidFrameError) as err:
                raise h2.exceptions.ProtocolError(
                    f"Received frame with invalid header: {err!s}"
                ) from err
            size = FRAME_HEADER_LENGTH + length
            if self._buffered < size:
                raise StopIteration
            self._validate_frame_length(length)
            plain_data = type(frame) is DataFrame and "PADDED" not in frame.flags
            body: bytes | memoryview
            if in_first >= size:
                # The common case: the whole frame came in one read.
                body_at = start + FRAME_HEADER_LENGTH
                if plain_data:
                    body = first[body_at : start + size]  # the one copy
                else:
                    body = memoryview(first)[body_at : start + size]
                self._buffered -= size
                if in_first == size:
                    self._chunks.popleft()
                    self._offset = 0
                else:
                    self._offset = start + size
            else:
                self._take(FRAME_HEADER_LENGTH)
                body = self._take(length)
            if plain_data:
                frame.data = body if type(body) is bytes else bytes(body)
                frame.body_len = length
            else:
                try:
                    frame.parse_body(memoryview(body))
                except InvalidDataError as err:
                    raise h2.exceptions.ProtocolError(
                        "Received frame with non-compliant data"
                    ) from err
                except InvalidFrameError as err:
                    raise h2.exceptions.FrameDataMissingError(
                        "Frame data missing or invalid"
                    ) from err
            complete = self._update_header_buffer(frame)
            if complete is not None:
                return complete
            # A HEADERS block waiting for its CONTINUATIONs: go on to the next frame.

    # -- the queue of reads -----------------------------------------------------------

    def _append(self, data: bytes) -> None:
        if not data:
            return
        self._buffered += len(data)
        chunks = self._chunks
        if len(data) < SMALL_READ and chunks and len(chunks[-1]) < SMALL_READ:
            # A peer that drips bytes must not grow the queue one object per read.
            chunks[-1] += data
        else:
            chunks.append(data)

    def _peek(self, n: int) -> bytes:
        """The next `n` bytes (n ≤ buffered), without consuming them."""
        first = self._chunks[0]
        start = self._offset
        if len(first) - start >= n:
            return first[start : start + n]
        pieces = [first[start:]]
        have = len(pieces[0])
        for chunk in itertools.islice(self._chunks, 1, None):
            pieces.append(chunk[: n - have])
            have += len(pieces[-1])
            if have >= n:
                break
        return b"".join(pieces)

    def _take(self, n: int) -> bytes | memoryview:
        """Consume the next `n` bytes (n ≤ buffered): a view when they lie in one read,
        else one joined copy."""
        if not n:
            return b""
        self._buffered -= n
        first = self._chunks[0]
        start = self._offset
        left = len(first) - start
        if left > n:
            self._offset = start + n
            return memoryview(first)[start : start + n]
        if left == n:
            self._chunks.popleft()
            self._offset = 0
            return memoryview(first)[start:] if start else first
        pieces: list[bytes | memoryview] = [memoryview(first)[start:]]
        self._chunks.popleft()
        need = n - left
        while need:
            chunk = self._chunks[0]
            if len(chunk) > need:
                pieces.append(memoryview(chunk)[:need])
                self._offset = need
                break
            pieces.append(chunk)
            self._chunks.popleft()
            need -= len(chunk)
        else:
            self._offset = 0
        return b"".join(pieces)
