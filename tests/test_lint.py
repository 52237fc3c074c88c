"""ruff (rules E, F, I, B, UP) and mypy (check_untyped_defs) over src/, configured in
pyproject.toml, with zero findings: run here so the README's one test command (and so
CI) checks them, instead of a second command that a fresh machine could skip."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True, timeout=600)


def test_ruff_finds_nothing_in_src():
    result = _run("ruff", "check", "src")
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.skipif(not (ROOT / "src" / "llamahost").is_dir(), reason="needs the source tree")
def test_mypy_finds_nothing_in_src():
    result = _run("mypy")
    assert result.returncode == 0, result.stdout + result.stderr
