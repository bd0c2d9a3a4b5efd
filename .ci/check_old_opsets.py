"""Old models in a real consumer: the fmnist fixture rewritten as an opset-10 / IR 5 model and
as an opset-8 / IR 3 model (every initializer also a graph input, as 2018 exporters wrote),
quantized with default flags, `--target ort` and `--target tensorrt`; each output must pass
onnx.checker, load and run in ONNX Runtime and follow the float model (SQNR over 25 dB on
seeded inputs). Before issue 14's fixes the IR 3 outputs failed the checker and the opset-10
`--target ort` output did not load (ONNX Runtime inserted an opset-11 Round for the bias).
"""

import os
import subprocess
import sys
import tempfile

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(ROOT, "target", "release", "isquant")


def old_model(path, opset, ir):
    m = onnx.load(os.path.join(ROOT, "fixtures", "fmnist-small-bn.onnx"))
    m.opset_import[0].version = opset
    m.ir_version = ir
    for n in m.graph.node:
        if n.op_type == "MaxPool" and opset < 10:
            keep = [a for a in n.attribute if a.name not in ("ceil_mode", "dilations")]
            del n.attribute[:]
            n.attribute.extend(keep)
    if ir < 4:
        names = {i.name for i in m.graph.input}
        for t in m.graph.initializer:
            if t.name not in names:
                m.graph.input.append(helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)))
    onnx.checker.check_model(m)
    onnx.save(m, path)


def run(path, x):
    o = ort.SessionOptions()
    o.log_severity_level = 3
    s = ort.InferenceSession(path, o, providers=["CPUExecutionProvider"])
    name = s.get_inputs()[0].name
    return np.concatenate([s.run(None, {name: x[i : i + 1]})[0] for i in range(len(x))])


def main():
    x = np.random.default_rng(3).uniform(0.0, 1.0, (16, 1, 28, 28)).astype(np.float32)
    failed = 0
    with tempfile.TemporaryDirectory() as d:
        for opset, ir in ((10, 5), (8, 3)):
            src = os.path.join(d, f"op{opset}.onnx")
            old_model(src, opset, ir)
            ref = run(src, x)
            for flags in ([], ["--target", "ort"], ["--target", "tensorrt"]):
                out = os.path.join(d, f"op{opset}-{'-'.join(flags) or 'default'}.onnx")
                r = subprocess.run([BIN, "quantize", src, "-o", out, *flags], capture_output=True, text=True)
                label = f"opset {opset} / IR {ir} {' '.join(flags) or 'default'}"
                if r.returncode not in (0, 3):
                    print(f"FAIL {label}: exit {r.returncode}: {r.stderr.strip()}")
                    failed += 1
                    continue
                try:
                    m = onnx.load(out)
                    onnx.checker.check_model(m)
                    y = run(out, x)
                    sqnr = 10 * np.log10((ref**2).sum() / max(((ref - y) ** 2).sum(), 1e-30))
                except Exception as e:  # noqa: BLE001 — any failure is reported
                    print(f"FAIL {label}: {str(e)[:300]}")
                    failed += 1
                    continue
                ok = sqnr > 25.0
                failed += 0 if ok else 1
                print(f"{'ok  ' if ok else 'FAIL'} {label}: IR {m.ir_version}, opset {m.opset_import[0].version}, SQNR {sqnr:.2f} dB in ONNX Runtime")
    print(f"old opsets: {6 - failed} passed, {failed} failed")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
