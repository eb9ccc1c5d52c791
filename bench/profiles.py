"""Add up py-spy's collapsed stacks (``--format raw``, written by ``make bench
BENCH_ARGS=--profile`` beside each flame graph): the functions with the largest
share of samples, inclusive (on the stack) and self (at the top).

    python -m bench.profiles bench/results/profiles/proxy.txt [--top 30] [--match nats]
"""

from __future__ import annotations

import argparse
import re
from collections import Counter
from pathlib import Path

# "function (path/to/file.py:123)" -> "function (file.py)": lines differ per call site.
_FRAME = re.compile(r"^(?P<fn>.*?) \((?P<file>[^:()]+)(?::\d+)?\)$")


def _name(frame: str) -> str:
    m = _FRAME.match(frame.strip())
    if m is None:
        return frame.strip()
    return f"{m['fn']} ({Path(m['file']).name})"


def tally(path: Path) -> tuple[int, Counter[str], Counter[str]]:
    """Total samples, inclusive and self counts per function."""
    total = 0
    inclusive: Counter[str] = Counter()
    own: Counter[str] = Counter()
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = [_name(f) for f in stack.split(";") if f]
        if not frames:
            continue
        total += n
        for name in set(frames):
            inclusive[name] += n
        own[frames[-1]] += n
    return total, inclusive, own


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("files", nargs="+", type=Path)
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--match", default="", help="only functions whose name contains this")
    args = ap.parse_args()
    for path in args.files:
        total, inclusive, own = tally(path)
        print(f"== {path} ({total} samples)")
        for title, counts in (("inclusive", inclusive), ("self", own)):
            print(f"-- {title}")
            shown = [(k, v) for k, v in counts.most_common() if args.match in k][: args.top]
            for name, n in shown:
                print(f"{100 * n / max(total, 1):6.1f}%  {name}")


if __name__ == "__main__":
    main()
