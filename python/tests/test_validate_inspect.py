"""isquant.validate (paths and numpy arrays) and isquant.inspect, against the command line."""

from __future__ import annotations

import json

import numpy as np
import pytest

import isquant
from conftest import FIXTURES, FMNIST, MNIST, normalize, run

MNIST_DIGITS = FIXTURES / "data" / "mnist-20"


@pytest.fixture(scope="module")
def mnist_int8(tmp_path_factory):
    out = tmp_path_factory.mktemp("int8") / "mnist-int8.onnx"
    isquant.quantize(MNIST, out, preset="mnist")
    return out


def test_validate_paths_same_as_the_cli(cli, mnist_int8, tmp_path):
    py_json, cli_json = tmp_path / "py.json", tmp_path / "cli.json"
    v = isquant.validate(MNIST, mnist_int8, MNIST_DIGITS, preset="mnist", label_regex=r"_(\d+)\.png$", json=py_json)
    r = run(cli, "validate", MNIST, mnist_int8, MNIST_DIGITS, "--preset", "mnist",
            "--label-regex", r"_(\d+)\.png$", "--json", cli_json)
    assert r.returncode == 0, r.stderr
    assert normalize(r.stdout.rstrip("\n")) == normalize(v.summary)
    assert v.passed and v.metrics["samples"] == 20 and v.metrics["labeled"] == 20
    for m in (v.metrics, json.loads(py_json.read_text())):
        cli_m = json.loads(cli_json.read_text())
        for k in ("seconds", "samples_per_second"):
            m.pop(k, None)
            cli_m.pop(k, None)
        assert m == cli_m


def test_validate_numpy_arrays(mnist_int8):
    x = np.random.default_rng(1).uniform(-0.4, 2.8, size=(12, 1, 28, 28)).astype(np.float32)
    batch = isquant.validate(MNIST, mnist_int8, x)
    assert batch.metrics["samples"] == 12 and not batch.metrics["synthetic"]
    assert "12 inputs from arrays" in batch.summary
    # A list of single inputs (no batch dimension), float64 converted: the same numbers.
    singles = isquant.validate(MNIST, mnist_int8, [a.astype(np.float64) for a in x])
    assert singles.metrics["outputs"] == batch.metrics["outputs"]
    labeled = isquant.validate(MNIST, mnist_int8, x, labels=[0] * 12)
    assert labeled.metrics["labeled"] == 12
    with pytest.raises(isquant.ConfigError, match="labels"):
        isquant.validate(MNIST, mnist_int8, x, labels=[0, 1])
    with pytest.raises(isquant.ConfigError, match="shape"):
        isquant.validate(MNIST, mnist_int8, np.zeros((2, 3), np.float32))
    bad = x.copy()
    bad[0, 0, 0, 0] = np.nan
    with pytest.raises(isquant.ConfigError, match="NaN"):
        isquant.validate(MNIST, mnist_int8, bad)


def test_validate_models_as_bytes(mnist_int8):
    v = isquant.validate(MNIST.read_bytes(), mnist_int8.read_bytes(), synthetic=8)
    assert v.metrics["samples"] == 8 and v.metrics["synthetic"]


def test_validate_threshold(mnist_int8):
    with pytest.raises(isquant.BelowThresholdError) as e:
        isquant.validate(MNIST, mnist_int8, min_sqnr=300)
    assert e.value.exit_code == 1 and not e.value.result.passed


def test_inspect_same_as_the_cli(cli):
    i = isquant.inspect(FMNIST)
    r = run(cli, "inspect", FMNIST)
    assert r.returncode == 0 and r.stdout.rstrip("\n") == i.summary
    r = run(cli, "inspect", FMNIST, "--json")
    assert json.loads(r.stdout) == i.report
    assert isquant.inspect(FMNIST.read_bytes()).report["path"] == "<bytes>"
