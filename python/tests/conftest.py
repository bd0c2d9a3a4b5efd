"""Shared helpers of the Python tests: the repository's fixtures and the two command lines the
Python API is compared with (the wheel's `isquant` command and, when built, the cargo binary)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "fixtures"
FMNIST = FIXTURES / "fmnist-small-bn.onnx"
FMNIST_EXTERNAL = FIXTURES / "fmnist-small-bn-external.onnx"
MNIST = FIXTURES / "mnist-cnn.onnx"
USPS = FIXTURES / "usps-cnn-bn.onnx"

# The wheel's console script, beside the interpreter running the tests.
WHEEL_CLI = Path(sys.executable).parent / "isquant"
# The binary `cargo build --release` / `cargo test --release` makes.
CARGO_CLI = ROOT / "target" / "release" / "isquant"


def clis() -> list[Path]:
    found = [WHEEL_CLI]
    if CARGO_CLI.exists():
        found.append(CARGO_CLI)
    return found


@pytest.fixture(params=clis(), ids=lambda p: "wheel-cli" if p == WHEEL_CLI else "cargo-cli")
def cli(request) -> Path:
    return request.param


def run(cli: Path, *args, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(cli), *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=cwd,
    )


# Durations differ between any two runs ("time  fold-bn 4.2 ms, ...", "(0.1 s; ...",
# "580.0 inputs/s"): replaced before texts are compared.
_DURATION = re.compile(r"\d+(\.\d+)?\s?(ms|µs|s|ns|inputs/s)\b")


def normalize(text: str) -> str:
    return _DURATION.sub("<t>", text)


def error_lines(stderr: str) -> list[str]:
    """The CLI's error message: from its `error: ` line to the first blank line (its `caused
    by` lines, or clap's `[possible values: ...]`), without the `error: ` prefix."""
    lines = stderr.splitlines()
    for i, line in enumerate(lines):
        if line.startswith("error: "):
            out = [line[len("error: "):]]
            for rest in lines[i + 1:]:
                if not rest.strip():
                    break
                out.append(rest)
            return out
    return []


@pytest.fixture
def cwd_tmp(tmp_path, monkeypatch) -> Path:
    monkeypatch.chdir(tmp_path)
    return tmp_path


def without_timings(report: dict) -> dict:
    """A quantize report without what differs between any two runs: the stage timings and
    the guard's duration."""
    r = dict(report)
    r.pop("timings_ms", None)
    if isinstance(r.get("guard"), dict):
        r["guard"] = {k: v for k, v in r["guard"].items() if k != "seconds"}
    return r


os.environ.setdefault("RAYON_NUM_THREADS", "2")
