"""The package: the console command, the options mirroring the CLI's flags, imports."""

from __future__ import annotations

import inspect as pyinspect
import subprocess
import sys

import isquant
from isquant import _isquant
from conftest import FMNIST, WHEEL_CLI, CARGO_CLI, run


def keywords(fn) -> set:
    return {p.name for p in pyinspect.signature(fn).parameters.values() if p.kind == p.KEYWORD_ONLY}


def test_quantize_keywords_are_the_cli_flags():
    assert keywords(isquant.quantize) - {"progress"} == set(_isquant.option_names("quantize"))


def test_validate_keywords_are_the_cli_flags():
    assert keywords(isquant.validate) - {"progress"} == set(_isquant.option_names("validate"))


def test_console_command_is_the_cli(tmp_path):
    r = run(WHEEL_CLI, "--help")
    assert r.returncode == 0 and "Usage: isquant <COMMAND>" in r.stdout
    r = run(WHEEL_CLI, "--version")
    assert r.stdout.strip() == f"isquant {isquant.__version__}"
    r = run(WHEEL_CLI, "quantize", FMNIST)  # no -o: a usage error, exit 2
    assert r.returncode == 2 and "--output <OUTPUT>" in r.stderr
    if CARGO_CLI.exists():
        for args in (["--help"], ["quantize", "--help"], ["quantize", FMNIST], ["inspect", FMNIST]):
            a, b = run(WHEEL_CLI, *args), run(CARGO_CLI, *args)
            assert (a.returncode, a.stdout, a.stderr) == (b.returncode, b.stdout, b.stderr)
    r = subprocess.run([sys.executable, "-m", "isquant", "quantize", FMNIST, "-o", tmp_path / "m.onnx"],
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert r.returncode == 0 and "wrote      " in r.stdout
    assert r.stderr.splitlines()[0] == "isquant: fold-bn..."


def test_console_command_stdout_survives_a_closed_pipe():
    # `isquant inspect ... | head -1`: ends quietly.
    p = subprocess.run(f"'{WHEEL_CLI}' inspect '{FMNIST}' | head -1", shell=True,
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert p.stdout.startswith("model ") and p.stderr == ""


def test_import_needs_neither_numpy_nor_onnx():
    code = (
        "import sys; sys.modules['numpy'] = None; sys.modules['onnx'] = None\n"
        "import isquant\n"
        f"r = isquant.quantize({str(FMNIST)!r})\n"
        "print(len(r.model) > 0, 'numpy' in sys.modules and sys.modules['numpy'] is not None)\n"
    )
    r = subprocess.run([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["True", "False"]


def test_version():
    assert isquant.__version__ == _isquant.__version__
    from importlib.metadata import version

    assert version("isquant") == isquant.__version__
