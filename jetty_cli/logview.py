"""The foreground console of ``jetty up``: new lines of each log file, tagged.

Services write to their own log files (so their output survives the console and
no pipe ties them to it); this follows the files from where they were when we
started and prints ``gateway  | 12:00:01 INFO …``.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import TextIO

# "2025-01-31 12:00:01,123 gateway INFO ..." -> "12:00:01 INFO ..."
_PREFIX = re.compile(r"^\d{4}-\d\d-\d\d[ T](\d\d:\d\d:\d\d)(?:[.,]\d+)? (?:(\S+) )?")
_COLOURS = (36, 35, 33, 32, 34, 31)
_MAX_CHUNK = 256 * 1024


def compact(name: str, line: str) -> str:
    match = _PREFIX.match(line)
    if match is None:
        return line
    rest = line[match.end() :]
    if match.group(2) not in (None, name):
        rest = match.group(2) + " " + rest  # not the service's own name: keep it
    return f"{match.group(1)} {rest}"


class LogFollower:
    def __init__(self, out: TextIO | None = None, width: int = 9) -> None:
        self.out = out or sys.stdout
        self.width = width
        self.colour = self.out.isatty()
        self._files: dict[str, Path] = {}
        self._offsets: dict[str, int] = {}
        self._partial: dict[str, bytes] = {}

    def follow(self, name: str, path: Path, from_start: bool = False) -> None:
        """Start following ``path``; only lines written from now on are shown."""
        self._files[name] = path
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            size = 0
        self._offsets[name] = 0 if from_start else size
        self._partial[name] = b""

    def tag(self, name: str) -> str:
        label = f"{name:<{self.width}}|"
        if not self.colour:
            return label
        colour = _COLOURS[sum(map(ord, name)) % len(_COLOURS)]
        return f"\x1b[{colour}m{label}\x1b[0m"

    def say(self, message: str) -> None:
        """A line from ``jetty up`` itself."""
        for line in message.splitlines() or [""]:
            self.out.write(f"{self.tag('jetty')} {line}\n")
        self.out.flush()

    def pump(self) -> None:
        """Print whatever complete lines were appended since the last call."""
        wrote = False
        for name, path in self._files.items():
            try:
                with path.open("rb") as fh:
                    size = fh.seek(0, 2)
                    if size < self._offsets[name]:  # truncated or replaced
                        self._offsets[name] = 0
                    fh.seek(self._offsets[name])
                    data = fh.read(_MAX_CHUNK)
            except FileNotFoundError:
                continue
            if not data:
                continue
            self._offsets[name] += len(data)
            data = self._partial[name] + data
            *lines, self._partial[name] = data.split(b"\n")
            for raw in lines:
                text = compact(name, raw.decode(errors="replace").rstrip("\r"))
                self.out.write(f"{self.tag(name)} {text}\n")
                wrote = True
        if wrote:
            self.out.flush()
