"""Latency of models in ONNX Runtime side by side, and what its optimizer makes of them.

Each model gets a CPU session (1 intra-op thread, ORT_ENABLE_ALL); rounds run every model once
on the same seeded N(0, 1) input (interleaved, so a change of machine load hits all alike),
3 warm-up rounds are not counted. Prints per model the median and its ratio to the first
model, and the op counts of ONNX Runtime's optimized graph that show fusion (QLinearConv =
convolution in integers; Conv/FusedConv = float). Optimized graphs are written to a temporary
folder, never beside the models.

Usage: python tools/formats/ort_latency.py NAME=MODEL.onnx [NAME=MODEL.onnx ...] [--runs 30]
       [--shape 1,3,224,224]   (the first model is the baseline: list the float model first)
"""

import argparse
import collections
import os
import tempfile
import time

import numpy as np
import onnx
import onnxruntime as ort

SHOWN = ("QLinearConv", "FusedConv", "Conv", "QLinearAdd", "QLinearMatMul", "QGemm", "Gemm",
         "ConvInteger", "MatMulInteger", "QuantizeLinear", "DequantizeLinear", "Min", "Relu",
         "Clip", "Add")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("models", nargs="+", help="NAME=PATH")
    ap.add_argument("--runs", type=int, default=30)
    ap.add_argument("--shape", default="1,3,224,224")
    a = ap.parse_args()
    shape = tuple(int(d) for d in a.shape.split(","))
    tmp = tempfile.mkdtemp(prefix="ort-latency-")
    sessions = []
    for k, spec in enumerate(a.models):
        name, path = spec.split("=", 1)
        o = ort.SessionOptions()
        o.intra_op_num_threads = 1
        o.inter_op_num_threads = 1
        o.log_severity_level = 3
        o.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        o.optimized_model_filepath = os.path.join(tmp, f"{k}.onnx")
        s = ort.InferenceSession(path, o, providers=["CPUExecutionProvider"])
        ops = collections.Counter(n.op_type for n in onnx.load(o.optimized_model_filepath).graph.node)
        sessions.append((name, s, {op: ops[op] for op in SHOWN if ops[op]}))
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    times = {name: [] for name, _, _ in sessions}
    for r in range(a.runs + 3):
        for name, s, _ in sessions:
            t = time.perf_counter()
            s.run(None, {s.get_inputs()[0].name: x})
            if r >= 3:
                times[name].append(time.perf_counter() - t)
    base = float(np.median(times[sessions[0][0]]))
    for name, _, ops in sessions:
        m = float(np.median(times[name]))
        print(f"{name:16s} median {m * 1e3:7.2f} ms  ratio to first {m / base:5.2f}  {ops}")


if __name__ == "__main__":
    main()
