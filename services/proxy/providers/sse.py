"""Incremental Server-Sent Events decoder (the WHATWG ``text/event-stream`` rules).

Bytes arrive in arbitrary pieces; :meth:`SSEDecoder.feed` returns the events
completed by each piece. Handles ``\\n``, ``\\r\\n`` and lone ``\\r`` line ends (also
split across pieces), comment lines (``: keep-alive``), multi-line ``data:``
(joined with ``\\n``), the optional space after the colon, and ``event:`` names
(Anthropic and Cohere streams name their events; OpenAI's do not). ``data`` stays
bytes because it goes straight to a JSON parser.
"""

from __future__ import annotations

from typing import NamedTuple


class SSEEvent(NamedTuple):
    event: str
    data: bytes


class SSEDecoder:
    __slots__ = ("_buf", "_data", "_event")

    def __init__(self) -> None:
        self._buf = b""
        self._data: list[bytes] = []
        self._event = ""

    def feed(self, piece: bytes) -> list[SSEEvent]:
        buf = self._buf + piece if self._buf else piece
        if b"\r" in buf:
            # A trailing CR may be the first half of CRLF: wait for the next piece.
            hold = buf.endswith(b"\r")
            if hold:
                buf, tail = buf[:-1], b"\r"
            buf = buf.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
            if hold:
                lines = buf.split(b"\n")
                self._buf = lines.pop() + tail
                return self._lines(lines)
        lines = buf.split(b"\n")
        self._buf = lines.pop()
        return self._lines(lines)

    def _lines(self, lines: list[bytes]) -> list[SSEEvent]:
        events: list[SSEEvent] = []
        for line in lines:
            if not line:
                if self._data:
                    events.append(SSEEvent(self._event or "message", b"\n".join(self._data)))
                self._data = []
                self._event = ""
                continue
            if line[0] == 58:  # ":" starts a comment
                continue
            name, _, value = line.partition(b":")
            if value[:1] == b" ":
                value = value[1:]
            if name == b"data":
                self._data.append(value)
            elif name == b"event":
                self._event = value.decode("utf-8", "replace")
            # "id" and "retry" only matter to reconnecting browsers; ignored.
        return events

    def end(self) -> list[SSEEvent]:
        """At end of stream: a held CR was a line end after all."""
        return self.feed(b"\n") if self._buf.endswith(b"\r") else []

    @property
    def pending(self) -> bool:
        """True when bytes of an unfinished event are buffered (a stream cut mid-event)."""
        return bool(self._buf or self._data)
