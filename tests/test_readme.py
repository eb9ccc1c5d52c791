"""The README's examples, run as written against a real stack (curl in bash,
the Python SDK example, the JavaScript fetch example under Node)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from jetty_cli.testing import TestStack

README = Path(__file__).resolve().parent.parent / "README.md"
FENCE = re.compile(r"^```(\w+)\n(.*?)^```", re.M | re.S)


def _blocks(language: str) -> list[str]:
    return [body for lang, body in FENCE.findall(README.read_text()) if lang == language]


def _runnable_shell() -> list[str]:
    # The set-up blocks (make, export) are not API examples.
    return [b for b in _blocks("sh") if "curl" in b and "make " not in b and "export" not in b]


def _env(stack: TestStack) -> dict[str, str]:
    return {**os.environ, "JETTY_URL": stack.base_url, "JETTY_API_TOKEN": stack.token}


def test_readme_has_the_examples() -> None:
    assert len(_runnable_shell()) >= 4
    assert _blocks("python") and _blocks("js")
    first = README.read_text().split("```", 2)[1]
    assert "make up" in first and "make test" in first  # the two commands come first


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl not installed")
@pytest.mark.parametrize("index", range(5))
def test_shell_example(stack: TestStack, index: int) -> None:
    script = _runnable_shell()[index]
    result = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script],
        env=_env(stack), capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    if '"stream": true' in script:
        assert result.stdout.rstrip().endswith("data: [DONE]")
        assert '"error"' not in result.stdout
        return
    documents = _json_documents(result.stdout)
    assert documents
    for document in documents:
        assert document.get("error") is None, document
        assert {"choices", "steps", "data", "path"} & document.keys()
        metadata = document.get("jetty_metadata")
        if isinstance(metadata, dict) and metadata.get("mode") == "runbook":
            # The agent really ran (in its sandbox, against the mock model).
            assert metadata["status"] == "completed", metadata
            assert metadata["model_calls"] >= 1


def _json_documents(text: str) -> list[dict[str, object]]:
    """curl prints answers back to back without newlines."""
    decoder = json.JSONDecoder()
    out, index = [], 0
    while index < len(text):
        if text[index].isspace():
            index += 1
            continue
        document, index = decoder.raw_decode(text, index)
        out.append(document)
    return out


def test_python_example(stack: TestStack) -> None:
    (code,) = _blocks("python")
    result = subprocess.run(
        [sys.executable, "-c", code],
        env=_env(stack), capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "You said: Hello"
    assert lines[1].startswith("tr_")
    assert lines[2] == "You said: Stream, please"
    assert lines[3] == "2 256"


@pytest.mark.skipif(shutil.which("node") is None, reason="node not installed")
def test_javascript_example(stack: TestStack, tmp_path: Path) -> None:
    (code,) = _blocks("js")
    script = tmp_path / "example.mjs"
    script.write_text(code)
    result = subprocess.run(
        ["node", str(script)],
        env=_env(stack), capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("You said: Hello from fetch tr_")
