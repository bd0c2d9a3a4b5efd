"""How far each format's quantized tensors are from the default format's, in quantization steps.

For every tensor the default (convinteger) model quantizes (the input of each QuantizeLinear),
run both models in ONNX Runtime on seeded inputs with that tensor as an extra output and report
the largest |a - b| divided by the coarser of the two formats' steps for that tensor, over the
first quantized tensor and over all of them.

Usage: python bench/formats/agreement.py MODEL.onnx [INPUT_LO INPUT_HI]
"""

import os
import subprocess
import sys
import tempfile

import numpy as np
import onnx
import onnxruntime as ort
from onnx import numpy_helper

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BIN = os.path.join(ROOT, "target", "release", "isquant")


def q_scales(m):
    init = {i.name: numpy_helper.to_array(i) for i in m.graph.initializer}
    out = {}
    for n in m.graph.node:
        if n.op_type == "QuantizeLinear" and n.input[1] in init:
            out.setdefault(n.input[0], float(init[n.input[1]].reshape(-1)[0]))
    return out


def run(path, names, x):
    m = onnx.load(path)
    have = {o for n in m.graph.node for o in n.output}
    names = [v for v in names if v in have]
    del m.graph.output[1:]
    for v in names:
        m.graph.output.append(onnx.helper.make_empty_tensor_value_info(v))
    o = ort.SessionOptions()
    o.log_severity_level = 3
    s = ort.InferenceSession(m.SerializeToString(), o, providers=["CPUExecutionProvider"])
    r = s.run(None, {s.get_inputs()[0].name: x})
    return dict(zip(names, r[1:])), r[0]


def main():
    model = sys.argv[1]
    lo, hi = (float(sys.argv[2]), float(sys.argv[3])) if len(sys.argv) > 3 else (-1.0, 1.0)
    with tempfile.TemporaryDirectory() as t:
        paths = {}
        for f in ("convinteger", "convinteger-u8", "qdq", "qdq-u8"):
            paths[f] = os.path.join(t, f + ".onnx")
            subprocess.run([BIN, "quantize", model, "-o", paths[f], "--format", f], check=True,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        base = onnx.load(paths["convinteger"])
        scales = q_scales(base)
        order = [n.input[0] for n in base.graph.node if n.op_type == "QuantizeLinear"]
        s = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
        shape = [d if isinstance(d, int) and d > 0 else 2 for d in s.get_inputs()[0].shape]
        x = np.random.default_rng(3).uniform(lo, hi, shape).astype(np.float32)
        ref, ref_out = run(paths["convinteger"], order, x)
        print(os.path.basename(model))
        for f in ("convinteger-u8", "qdq", "qdq-u8"):
            other = q_scales(onnx.load(paths[f]))
            got, out = run(paths[f], order, x)
            steps = []
            for v in order:
                if v in got and v in ref:
                    step = max(scales[v], other.get(v, scales[v]))
                    steps.append(float(np.max(np.abs(ref[v] - got[v]))) / step)
            d_out = float(np.max(np.abs(ref_out - out)))
            print(f"  {f:15s} first tensor {steps[0]:.2f} steps, all {len(steps)} tensors max {max(steps):.2f} steps "
                  f"(median {np.median(steps):.2f}); output max |diff| {d_out:.3g}")


if __name__ == "__main__":
    main()
