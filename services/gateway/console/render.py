"""Turning recorded content into safe HTML, on the server.

Everything shown came from a model, a user, a tool or a file name, so everything
is escaped (Jinja2's autoescape, and :func:`markupsafe.escape` here); what must
stay visible but inert is made so: bidirectional overrides and control characters
become visible ``⟨U+202E⟩`` marks, a redacted base64 marker becomes a chip, and
Markdown is rendered by markdown-it-py (raw HTML off) and then sanitised by nh3
(ammonia) with only http, https and mailto links.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

import nh3
import orjson
from markdown_it import MarkdownIt
from markupsafe import Markup, escape

# Bidi embeddings/overrides/isolates, and C0/C1 controls other than tab and newline.
_INVISIBLE = re.compile(r"[\u202a-\u202e\u2066-\u2069\u200e\u200f\x00-\x08\x0b-\x1f\x7f-\x9f]")
MARKER = re.compile(
    r"\[redacted base64: media_type=(?P<mime>[^;\]]*); bytes=(?P<bytes>\d+); "
    r"sha256=(?P<sha>[0-9a-f]{64})\]"
)
_MD = MarkdownIt("commonmark", {"html": False, "linkify": False}).enable("table")
_ALLOWED_TAGS = {
    "p", "em", "strong", "code", "pre", "blockquote", "ul", "ol", "li", "a", "h1", "h2",
    "h3", "h4", "h5", "h6", "hr", "br", "table", "thead", "tbody", "tr", "th", "td", "del",
}  # fmt: skip
MAX_TEXT = 200_000  # characters of one body shown; the rest is cut with a note


def inert(text: str | None) -> str:
    """``text`` with invisible controls made visible (still to be escaped)."""
    if not text:
        return ""
    return _INVISIBLE.sub(lambda m: f"⟨U+{ord(m.group()):04X}⟩", text)


def text_html(text: str | None, limit: int = MAX_TEXT) -> Markup:
    """Plain text as escaped HTML, redaction markers as chips, cut past ``limit``."""
    value = inert(text)
    cut = len(value) > limit
    value = value[:limit]
    parts: list[str] = []
    last = 0
    for match in MARKER.finditer(value):
        parts.append(str(escape(value[last : match.start()])))
        parts.append(str(chip(match.group("mime"), int(match.group("bytes")), match.group("sha"))))
        last = match.end()
    parts.append(str(escape(value[last:])))
    if cut:
        parts.append(f'<span class="cut">… {len(inert(text)) - limit:,} more characters</span>')
    return Markup("".join(parts))


def chip(mime: str, size: int, sha256: str) -> Markup:
    return Markup(
        '<span class="chip" title="sha256 {sha}">{mime} · {size} · sha256 {short}…</span>'
    ).format(mime=mime, size=human_bytes(size), sha=sha256, short=sha256[:12])


def markdown_html(text: str | None) -> Markup:
    html = _MD.render(inert(text)[:MAX_TEXT])
    clean = nh3.clean(
        html,
        tags=_ALLOWED_TAGS,
        attributes={"a": {"href", "title"}, "th": {"align"}, "td": {"align"}},
        url_schemes={"http", "https", "mailto"},
        link_rel="noopener noreferrer nofollow",
    )
    return Markup(clean)


def json_html(value: Any) -> Markup:
    """Pretty-printed JSON with each string escaped (and markers as chips)."""
    out: list[str] = []
    _json_into(value, out, 0)
    return Markup("".join(out))


def _json_into(value: Any, out: list[str], depth: int) -> None:
    pad = "  " * depth
    if isinstance(value, dict):
        if not value:
            out.append("{}")
            return
        out.append("{\n")
        for i, (key, item) in enumerate(value.items()):
            out.append(
                f'{pad}  <span class="k">{escape(orjson.dumps(inert(str(key))).decode())}</span>: '
            )
            _json_into(item, out, depth + 1)
            out.append(",\n" if i < len(value) - 1 else "\n")
        out.append(pad + "}")
    elif isinstance(value, list):
        if not value:
            out.append("[]")
            return
        out.append("[\n")
        for i, item in enumerate(value):
            out.append(pad + "  ")
            _json_into(item, out, depth + 1)
            out.append(",\n" if i < len(value) - 1 else "\n")
        out.append(pad + "]")
    elif isinstance(value, str):
        match = MARKER.fullmatch(value)
        if match:
            out.append(
                str(chip(match.group("mime"), int(match.group("bytes")), match.group("sha")))
            )
        else:
            quoted = orjson.dumps(value[:MAX_TEXT]).decode()
            out.append(f'<span class="s">{text_html(quoted)}</span>')
    else:
        out.append(f'<span class="n">{escape(orjson.dumps(value).decode())}</span>')


def json_text_html(raw: str | None) -> Markup:
    """A string that may hold JSON (tool arguments): pretty if it parses."""
    if not raw:
        return Markup("")
    try:
        return json_html(orjson.loads(raw))
    except orjson.JSONDecodeError:
        return text_html(raw)


def human_bytes(size: int | None) -> str:
    if size is None:
        return "—"
    value = float(size)
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1024 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{size} B"


def ms(value: float | None) -> str:
    if value is None:
        return "—"
    if value < 1000:
        return f"{value:.0f} ms"
    if value < 60_000:
        return f"{value / 1000:.2f} s"
    return f"{value / 60_000:.1f} min"


def usd(value: float | None) -> str:
    if value is None:
        return "—"
    if value == 0:
        return "$0"
    if value < 0.01:
        return f"${value:.6f}".rstrip("0")
    return f"${value:,.4f}"


def tokens(value: int | None) -> str:
    return "—" if value is None else f"{value:,}"


def when(moment: datetime | None) -> str:
    if moment is None:
        return "—"
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def iso(moment: datetime | None) -> str:
    return "" if moment is None else moment.astimezone(UTC).isoformat()


def writes(step: Any, path: str) -> bool:
    """Whether a tool call's input names the file ``path`` (workspace-relative)."""
    named = step.tool_input or {}
    for key in ("file_path", "path", "absolute_path"):
        value = named.get(key)
        if isinstance(value, str) and (value == path or value.endswith("/" + path)):
            return True
    return False


TESTS = {"writes": writes}

FILTERS = {
    "inert": inert,
    "text_html": text_html,
    "markdown_html": markdown_html,
    "json_html": json_html,
    "json_text_html": json_text_html,
    "human_bytes": human_bytes,
    "ms": ms,
    "usd": usd,
    "tokens": tokens,
    "when": when,
    "iso": iso,
}
