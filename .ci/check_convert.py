"""Cross-check `isquant convert` in a real consumer: ONNX's checker and ONNX Runtime.

For every model in fixtures/ (and in ../shared/models when it is present), convert it inline and
with --external-data, then require:
  * onnx.checker.check_model passes on the written model (full check, external data resolved);
  * ONNX Runtime's outputs on seeded inputs are bit-identical to the original model's;
  * converting the output again gives byte-identical bytes.
Prints one line per model and a closing "N passed, M failed" line; exits 1 on any failure.
"""

import os
import subprocess
import sys
import tempfile

import numpy as np
import onnx
import onnxruntime as ort

import ci_models  # the model list, beside this script

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(ROOT, "target", "release", "isquant")

# Concrete sizes for dimensions a model leaves open (its batch is always 2 where free).
SPATIAL = {
    "ppocr-textline-cls.onnx": [48, 192],
    "ppocrv4-det.onnx": [320, 320],
    "ppocrv4-rec.onnx": [48, 320],
}


def input_feed(sess, name):
    rng = np.random.default_rng(1234)
    feed = {}
    for inp in sess.get_inputs():
        shape = []
        for i, d in enumerate(inp.shape):
            if isinstance(d, int) and d > 0:
                shape.append(d)
            elif i == 0:
                shape.append(2)
            else:
                shape.append(SPATIAL[name][i - 2])
        feed[inp.name] = rng.uniform(-1.0, 1.0, size=shape).astype(np.float32)
    return feed


def run(path, name):
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
    return sess.run(None, input_feed(sess, name))


def convert(src, dst, *extra):
    subprocess.run([BIN, "convert", src, "-o", dst, *extra], check=True, stdout=subprocess.DEVNULL)


def data_file(model):
    """The external data file `model` names, as a path beside it (None: all weights inline)."""
    m = onnx.load(model, load_external_data=False)
    names = {e.value for t in m.graph.initializer for e in t.external_data if e.key == "location"}
    assert len(names) <= 1, f"{model}: expected one external data file, got {sorted(names)}"
    return os.path.join(os.path.dirname(model), names.pop()) if names else None


def check(model, tmp):
    name = os.path.basename(model)
    reference = run(model, name)
    for variant, extra in (("inline", []), ("external", ["--external-data"])):
        os.makedirs(os.path.join(tmp, variant, "once"), exist_ok=True)
        os.makedirs(os.path.join(tmp, variant, "twice"), exist_ok=True)
        out = os.path.join(tmp, variant, "once", name)
        convert(model, out, *extra)
        onnx.checker.check_model(out, full_check=True)
        got = run(out, name)
        assert len(got) == len(reference), f"{variant}: output count differs"
        for a, b in zip(reference, got):
            assert a.dtype == b.dtype and a.shape == b.shape, f"{variant}: output type/shape differ"
            assert np.array_equal(a, b), f"{variant}: outputs differ (max {np.max(np.abs(a - b))})"
        again = os.path.join(tmp, variant, "twice", name)
        convert(out, again, *extra)
        if extra:
            # The data file gets a fresh name on every write (<model>.<random>.data): compare
            # the models with their weights inline, then the data files they name.
            a, b = onnx.load(out), onnx.load(again)
            assert a.SerializeToString() == b.SerializeToString(), (
                f"{variant}: converting twice changed {again}")
            da, db = data_file(out), data_file(again)
            assert (da is None) == (db is None), f"{variant}: one copy has external data"
            files = [(da, db)] if da else []
        else:
            files = [(out, again)]
        for a, b in files:
            with open(a, "rb") as f1, open(b, "rb") as f2:
                assert f1.read() == f2.read(), f"{variant}: converting twice changed {b}"
    return f"{len(reference)} output(s) bit-identical, inline and external"


def main():
    models = ci_models.models(ROOT, skip_external=False)
    passed = failed = 0
    with tempfile.TemporaryDirectory() as tmp:
        for m in models:
            try:
                msg = check(m, tmp)
                passed += 1
                print(f"ok   {os.path.relpath(m, ROOT)}: {msg}")
            except Exception as e:  # noqa: BLE001 - report every model, then fail
                failed += 1
                print(f"FAIL {os.path.relpath(m, ROOT)}: {e}")
    print(f"onnxruntime {ort.__version__}, onnx {onnx.__version__}")
    print(f"{passed} passed, {failed} failed")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
