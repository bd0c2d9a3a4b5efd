"""isquant.quantize: models from a path, bytes and an onnx.ModelProto; the result in ONNX
Runtime; the report; the same bytes, report and summary as the command line."""

from __future__ import annotations

import json
import threading
import time

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import isquant
from conftest import (
    FMNIST,
    FMNIST_EXTERNAL,
    MNIST,
    USPS,
    normalize,
    run,
    without_timings,
)


def session(model) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 2
    return ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])


def sqnr(ref: np.ndarray, got: np.ndarray) -> float:
    ref, got = ref.astype(np.float64), got.astype(np.float64)
    return float(10 * np.log10(np.sum(ref**2) / np.sum((ref - got) ** 2)))


def test_path_bytes_and_modelproto_give_the_same_model():
    from_path = isquant.quantize(FMNIST)
    from_str = isquant.quantize(str(FMNIST))
    from_bytes = isquant.quantize(FMNIST.read_bytes())
    from_proto = isquant.quantize(onnx.load(str(FMNIST)))
    assert isinstance(from_path.model, bytes) and len(from_path.model) > 1000
    assert from_path.model == from_str.model == from_bytes.model == from_proto.model
    # The summary names the model: its path, or <bytes>.
    assert from_path.summary.splitlines()[0] == f"isquant {isquant.__version__} quantize {FMNIST}"
    assert from_bytes.summary.splitlines()[0].endswith("quantize <bytes>")
    assert normalize(from_bytes.summary.replace("<bytes>", str(FMNIST))) == normalize(
        from_path.summary
    )


def test_external_data_model_by_path_and_by_modelproto():
    by_path = isquant.quantize(FMNIST_EXTERNAL)
    # onnx.load reads the external data in: the proto is self-contained.
    by_proto = isquant.quantize(onnx.load(str(FMNIST_EXTERNAL)))
    assert by_path.model == by_proto.model == isquant.quantize(FMNIST).model
    # Bytes that still reference external data are refused (nothing to resolve it against).
    proto = onnx.load(str(FMNIST_EXTERNAL), load_external_data=False)
    with pytest.raises(isquant.Error) as e:
        isquant.quantize(proto)
    assert e.value.exit_code == 2
    assert "<bytes>" in str(e.value)


@pytest.mark.parametrize(
    "model, options, integer_ops",
    [
        (FMNIST, {}, {"ConvInteger", "MatMulInteger"}),
        (FMNIST, {"input_range": (-1.0, 2.8), "weight_bits": 7}, {"ConvInteger", "MatMulInteger"}),
        (MNIST, {"target": "ort"}, {"QuantizeLinear"}),
        (USPS, {"format": "qdq", "granularity": "per-channel"}, {"QuantizeLinear"}),
    ],
    ids=["fmnist-default", "fmnist-w7-input-range", "mnist-target-ort", "usps-qdq-per-channel"],
)
def test_result_runs_in_onnx_runtime(model, options, integer_ops):
    result = isquant.quantize(model, **options)
    onnx.checker.check_model(onnx.load_from_string(result.model), full_check=True)
    fsess = session(str(model))
    qsess = session(result.model)  # ONNX Runtime takes the bytes directly
    ops = {n.op_type for n in onnx.load_from_string(result.model).graph.node}
    assert ops & integer_ops, sorted(ops)
    inp = fsess.get_inputs()[0]
    shape = [d if isinstance(d, int) else 8 for d in inp.shape]
    x = np.random.default_rng(0).uniform(-0.5, 2.0, size=shape).astype(np.float32)
    ref = fsess.run(None, {inp.name: x})[0]
    got = qsess.run(None, {inp.name: x})[0]
    assert sqnr(ref, got) > 15.0


def test_report():
    result = isquant.quantize(FMNIST, weight_bits=6, skip=["/4/Conv"], keep_last_float=True)
    r = result.report
    assert r["version"] == isquant.__version__
    assert r["config"]["weight_bits"] == 6
    assert r["config"]["skip"] == ["/4/Conv"]
    assert r["config"]["keep_last_float"] is True
    assert r["config"]["format"] == "convinteger"
    quantized = [layer["node"] for layer in r["layers"]]
    assert "/4/Conv" not in quantized and len(quantized) == 2
    assert r["guard"]["passed"] is True
    assert "layers     2 quantized" in result.summary
    assert result.validation is None and result.output is None


def test_output_none_writes_nothing(cwd_tmp):
    before = sorted(p.name for p in cwd_tmp.iterdir())
    result = isquant.quantize(FMNIST)
    assert len(result.model) > 0
    assert sorted(p.name for p in cwd_tmp.iterdir()) == before == []


def test_output_and_report_are_written(tmp_path):
    out, report = tmp_path / "int8.onnx", tmp_path / "report.json"
    result = isquant.quantize(FMNIST, out, report=report)
    assert out.read_bytes() == result.model
    assert result.output == str(out)
    assert without_timings(json.loads(report.read_text())) == without_timings(result.report)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["int8.onnx", "report.json"]


OPTION_SETS = [
    ({}, []),
    (
        {"target": "ort", "weight_bits": 7, "input_range": (-1, 2.8)},
        ["--target", "ort", "--weight-bits", "7", "--input-range", "-1:2.8"],
    ),
    (
        {"skip": ["/4/*"], "correct_bias": False, "rounding": "nearest", "verbose": True},
        ["--skip", "/4/*", "--correct-bias", "off", "--rounding", "nearest", "--verbose"],
    ),
    (
        {"format": "qdq-u8", "granularity": "per-channel", "act_bits": 6, "guard": "off"},
        ["--format", "qdq-u8", "--granularity", "per-channel", "--act-bits", "6", "--guard", "off"],
    ),
]


@pytest.mark.parametrize("options, flags", OPTION_SETS, ids=["default", "ort-w7", "skip-nearest", "qdq-u8-a6"])
def test_same_files_and_summary_as_the_cli(cli, tmp_path, options, flags):
    cli_model, cli_report = tmp_path / "cli.onnx", tmp_path / "cli.json"
    r = run(cli, "quantize", FMNIST, "-o", cli_model, "--report", cli_report, *flags)
    assert r.returncode == 0, r.stderr
    py_model, py_report = tmp_path / "py.onnx", tmp_path / "py.json"
    result = isquant.quantize(FMNIST, py_model, report=py_report, **options)
    # The models: byte-identical, in the files and in memory.
    assert cli_model.read_bytes() == py_model.read_bytes() == result.model
    # The reports: identical but for the stage timings.
    cli_json = json.loads(cli_report.read_text())
    assert without_timings(cli_json) == without_timings(json.loads(py_report.read_text()))
    assert without_timings(cli_json) == without_timings(result.report)
    # The text: what the CLI prints before its `report` and `wrote` lines.
    lines = r.stdout.splitlines()
    n = len(result.summary.splitlines())
    assert normalize("\n".join(lines[:n])) == normalize(result.summary)
    assert lines[n].startswith("report     ") and lines[n + 1].startswith("wrote      ")


def test_summary_without_output_is_the_cli_summary(cli, tmp_path):
    """The acceptance check: quantize(path).summary is what `isquant quantize path -o x`
    prints (the CLI needs -o; the summary does not depend on it)."""
    r = run(cli, "quantize", FMNIST, "-o", tmp_path / "x.onnx")
    assert r.returncode == 0, r.stderr
    summary = isquant.quantize(FMNIST).summary
    printed = r.stdout[: r.stdout.index("\nwrote      ")]
    assert normalize(printed) == normalize(summary)


def test_progress_callback_hears_the_stages():
    stages = []
    isquant.quantize(FMNIST, progress=stages.append)
    assert stages[0] == "fold-bn"
    assert {"ranges", "squant", "emit", "guard"} <= set(stages)


def test_progress_callback_exception_is_raised():
    class Stop(Exception):
        pass

    calls = []

    def progress(stage):
        calls.append(stage)
        raise Stop(stage)

    with pytest.raises(Stop):
        isquant.quantize(FMNIST, progress=progress)
    assert calls == ["fold-bn"]  # no call after the first exception


def test_gil_is_released_while_rust_works():
    """A Python thread keeps running while quantize works in Rust."""
    done = threading.Event()
    ticks = [0]

    def count():
        while not done.is_set():
            ticks[0] += 1
            time.sleep(0.001)

    t = threading.Thread(target=count)
    t.start()
    try:
        start = time.perf_counter()
        ticks[0] = 0
        isquant.quantize(MNIST, guard="fix")
        elapsed = time.perf_counter() - start
    finally:
        done.set()
        t.join()
    # Holding the GIL would leave the thread at 0 ticks (or 1) for the whole call.
    assert elapsed < 0.05 or ticks[0] >= max(3, int(elapsed / 0.001 * 0.2)), (ticks[0], elapsed)


def test_validate_option_gives_a_validation(tmp_path):
    result = isquant.quantize(FMNIST, validate=True)
    assert result.validation is not None and result.validation.passed
    assert result.validation.metrics["synthetic"] is True
    assert result.validation.summary.startswith("validate   tract, 32 seeded synthetic inputs")


def test_validation_threshold_missed_raises_with_the_result(cli, tmp_path):
    with pytest.raises(isquant.BelowThresholdError) as e:
        isquant.quantize(FMNIST, tmp_path / "py.onnx", validate=True, min_sqnr=200)
    assert e.value.exit_code == 1
    assert e.value.result.validation.failures
    assert (tmp_path / "py.onnx").read_bytes() == e.value.result.model
    r = run(cli, "quantize", FMNIST, "-o", tmp_path / "cli.onnx", "--validate", "--min-sqnr", "200")
    assert r.returncode == 1
    assert f"below threshold: {'; '.join(e.value.result.validation.failures)}" in r.stderr


def test_guard_failure_raises_with_the_result(cli, tmp_path):
    with pytest.raises(isquant.GuardFailedError) as e:
        isquant.quantize(FMNIST, tmp_path / "py.onnx", guard="report", guard_min_sqnr=99)
    assert e.value.exit_code == 3
    result = e.value.result
    assert result.report["guard"]["passed"] is False
    assert (tmp_path / "py.onnx").read_bytes() == result.model
    r = run(cli, "quantize", FMNIST, "-o", tmp_path / "cli.onnx", "--guard", "report", "--guard-min-sqnr", "99")
    assert r.returncode == 3
    assert (tmp_path / "cli.onnx").read_bytes() == result.model
