"""Bad input: isquant.Error subclasses with the command line's messages and exit codes."""

from __future__ import annotations

import pytest

import isquant
from conftest import FIXTURES, FMNIST, error_lines, run


# (what the Python call gets, the CLI's arguments after `quantize`, the class raised)
CASES = [
    ("missing.onnx", {}, ["missing.onnx", "-o", "{tmp}/o.onnx"], isquant.FileError),
    (str(FIXTURES), {}, [str(FIXTURES), "-o", "{tmp}/o.onnx"], isquant.ModelError),
    (str(FIXTURES / "README.md"), {}, [str(FIXTURES / "README.md"), "-o", "{tmp}/o.onnx"], isquant.ModelError),
    (
        str(FIXTURES / "redteam" / "fuzz-tract-panic-conv-stride-zero.onnx"),
        {},
        [str(FIXTURES / "redteam" / "fuzz-tract-panic-conv-stride-zero.onnx"), "-o", "{tmp}/o.onnx"],
        isquant.ModelError,
    ),
    (
        str(FIXTURES / "redteam" / "fuzz-oom-input-dim-2p31.onnx"),
        {},
        [str(FIXTURES / "redteam" / "fuzz-oom-input-dim-2p31.onnx"), "-o", "{tmp}/o.onnx"],
        isquant.Error,
    ),
    (str(FMNIST), {"weight_bits": 9}, [str(FMNIST), "-o", "{tmp}/o.onnx", "--weight-bits", "9"], isquant.ConfigError),
    (str(FMNIST), {"format": "int4"}, [str(FMNIST), "-o", "{tmp}/o.onnx", "--format", "int4"], isquant.ConfigError),
    (
        str(FMNIST),
        {"input_range": "2:x"},
        [str(FMNIST), "-o", "{tmp}/o.onnx", "--input-range", "2:x"],
        isquant.ConfigError,
    ),
    (
        str(FMNIST),
        {"format": "qdq", "activation_type": "uint8"},
        [str(FMNIST), "-o", "{tmp}/o.onnx", "--format", "qdq", "--activation-type", "uint8"],
        isquant.ConfigError,
    ),
    (
        str(FMNIST),
        {"output": str(FMNIST)},
        [str(FMNIST), "-o", str(FMNIST)],
        isquant.ConfigError,
    ),
]


@pytest.mark.parametrize("model, options, argv, cls", CASES, ids=lambda v: None)
def test_same_error_as_the_cli(cli, tmp_path, model, options, argv, cls):
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    r = run(cli, "quantize", *argv)
    assert r.returncode == 2, r.stderr
    options = dict(options)
    output = options.pop("output", None)
    with pytest.raises(isquant.Error) as e:
        isquant.quantize(model, output, **options)
    assert isinstance(e.value, cls)
    assert e.value.exit_code == 2
    assert str(e.value).splitlines() == error_lines(r.stderr)


def test_bytes_that_are_not_a_model():
    with pytest.raises(isquant.ModelError) as e:
        isquant.quantize(b"\x07not a model")
    assert str(e.value).startswith("<bytes> is not a valid ONNX model (protobuf decoding failed)")
    assert e.value.causes


def test_error_classes_and_exit_codes():
    for cls in (isquant.FileError, isquant.ModelError, isquant.ConfigError, isquant.LimitError, isquant.TractError):
        assert issubclass(cls, isquant.Error) and cls.exit_code == 2
    assert issubclass(isquant.BelowThresholdError, isquant.Error) and isquant.BelowThresholdError.exit_code == 1
    assert issubclass(isquant.GuardFailedError, isquant.Error) and isquant.GuardFailedError.exit_code == 3


def test_python_type_errors():
    with pytest.raises(TypeError):
        isquant.quantize(12345)
    with pytest.raises(TypeError):
        isquant.quantize(FMNIST, no_such_option=1)
    with pytest.raises(isquant.ConfigError, match="True or False"):
        isquant.quantize(FMNIST, keep_first_float="yes")
    with pytest.raises(isquant.ConfigError, match="not a list"):
        isquant.quantize(FMNIST, weight_bits=[6, 7])


def test_nothing_written_on_error(tmp_path):
    with pytest.raises(isquant.ConfigError):
        isquant.quantize(FMNIST, tmp_path / "o.onnx", weight_bits=1)
    assert list(tmp_path.iterdir()) == []
