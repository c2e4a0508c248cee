"""Commands start fast: help and data checks import neither torch nor transformers.

Importing torch costs about a second and transformers more; a user asking for help should not
wait for either. Each check runs in a fresh interpreter, since this test process has both loaded.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

PROBE = """
import sys
from typer.testing import CliRunner
from visionloom.cli import app
result = CliRunner().invoke(app, {args!r})
assert result.exit_code == 0, result.output
print(sorted(name for name in ("torch", "transformers", "diffusers") if name in sys.modules))
"""


@pytest.mark.parametrize(
    "args",
    [
        ["--help"],
        ["data", "check", "--help"],
        ["doctor", "--help"],
        ["retrieval", "eval", "--help"],
        ["ground", "train", "--help"],
        ["vlm", "pretrain", "--help"],
    ],
)
def test_help_imports_no_model_library(args):
    out = subprocess.run(
        [sys.executable, "-c", PROBE.format(args=args)], capture_output=True, text=True, check=True
    )
    assert out.stdout.strip().splitlines()[-1] == "[]"


def test_data_check_imports_no_model_library(pedes_root):
    out = subprocess.run(
        [sys.executable, "-c", PROBE.format(args=["data", "check", str(pedes_root)])],
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.strip().splitlines()[-1] == "[]"
