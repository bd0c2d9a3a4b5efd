"""How far each format's quantized tensors are from the default format's, in quantization steps.

For every tensor the default (convinteger) model quantizes (the input of each QuantizeLinear),
run both models in ONNX Runtime on seeded inputs with that tensor as an extra output and report
the largest |a - b| divided by the coarser of the two formats' steps for that tensor, over the
first quantized tensor and over all of them.

Pairs compared (format vs the integer format with the same activation encoding):
  convinteger-u8 vs convinteger; qdq-u8 vs convinteger;
  qdq vs convinteger --activation-type int8 (qdq is int8 only, as TensorRT wants);
  and, for scale, the --qdq-outputs all forms (extra quantization points for more fusion).

Usage: python tools/formats/agreement.py MODEL.onnx [INPUT_LO INPUT_HI]
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
    """Quantized value -> (scale, lowest and highest value the QuantizeLinear can represent)."""
    init = {i.name: numpy_helper.to_array(i) for i in m.graph.initializer}
    out = {}
    for n in m.graph.node:
        if n.op_type == "QuantizeLinear" and n.input[1] in init:
            s = float(init[n.input[1]].reshape(-1)[0])
            zp = init[n.input[2]] if len(n.input) > 2 and n.input[2] in init else np.uint8(0)
            info = np.iinfo(zp.dtype)
            z = float(np.asarray(zp).reshape(-1)[0])
            out.setdefault(n.input[0], (s, (info.min - z) * s, (info.max - z) * s))
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
    if os.environ.get("ORT_NO_OPT"):
        o.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    s = ort.InferenceSession(m.SerializeToString(), o, providers=["CPUExecutionProvider"])
    r = s.run(None, {s.get_inputs()[0].name: x})
    return dict(zip(names, r[1:])), r[0]


def q_zero_point(m, n):
    for i in m.graph.initializer:
        if len(n.input) > 2 and i.name == n.input[2]:
            return numpy_helper.to_array(i).reshape(-1)[0]
    return np.uint8(0)


def run_model(m, feeds, names):
    have = {o for n in m.graph.node for o in n.output}
    names = [v for v in names if v in have]
    m = onnx.ModelProto.FromString(m.SerializeToString())
    del m.graph.output[:]
    # Read each value through an Identity: ONNX Runtime's Q/DQ fusion can otherwise drop the
    # producer of a requested value whose QuantizeLinear became a graph input.
    for v in names:
        m.graph.node.append(onnx.helper.make_node("Identity", [v], [v + "__probe"]))
        m.graph.output.append(onnx.helper.make_empty_tensor_value_info(v + "__probe"))
    o = ort.SessionOptions()
    o.log_severity_level = 3
    if os.environ.get("ORT_NO_OPT"):
        o.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    s = ort.InferenceSession(m.SerializeToString(), o, providers=["CPUExecutionProvider"])
    wanted = {i.name for i in s.get_inputs()}
    r = s.run(None, {k: v for k, v in feeds.items() if k in wanted})
    return dict(zip(names, r))


def forced_steps(base_path, other_path, x):
    """Per-tensor agreement with the same quantized inputs.

    Runs the base model, then runs the other model with every QuantizeLinear it shares with
    the base (same output name) replaced by the base's quantized values, so each tensor is
    compared as a function of identical quantized inputs: differences come from the format
    alone, not from one rounding flip upstream spreading through later layers. Returns
    [(tensor, max level difference, elements differing by more than one level, size)] and the
    number of the other model's QuantizeLinear nodes left in place (quantization points the
    base does not have)."""
    base = onnx.load(base_path)
    scales = q_scales(base)
    q_nodes = [n for n in base.graph.node if n.op_type == "QuantizeLinear"]
    q_outs = [n.output[0] for n in q_nodes]
    x_name = base.graph.input[0].name
    vals = run_model(base, {x_name: x}, q_outs + list(scales))
    other = onnx.load(other_path)
    other_q_in = {n.output[0]: n.input[0] for n in other.graph.node if n.op_type == "QuantizeLinear"}
    base_zp = {n.output[0]: q_zero_point(base, n) for n in q_nodes}
    keep, feeds, left = [], {x_name: x}, []
    for n in other.graph.node:
        if n.op_type == "QuantizeLinear":
            if n.output[0] in vals:
                # Re-encode when the zero-points differ (convinteger-u8: uint8, 128).
                zb, zo = base_zp[n.output[0]], q_zero_point(other, n)
                q = vals[n.output[0]].astype(np.int32) - int(zb) + int(zo)
                feeds[n.output[0]] = q.astype(zo.dtype)
                continue
            left.append(n.output[0])
        keep.append(n)
    del other.graph.node[:]
    other.graph.node.extend(keep)
    for k, a in feeds.items():
        if k != x_name:
            t = onnx.helper.np_dtype_to_tensor_dtype(a.dtype)
            other.graph.input.append(onnx.helper.make_tensor_value_info(k, t, a.shape))
    # Each of the base's QuantizeLinear inputs is compared with what the other model feeds
    # the QuantizeLinear of the same name (or, when it has none, with the same value), in the
    # levels that QuantizeLinear produces.
    wanted = {n.output[0]: other_q_in.get(n.output[0], n.input[0]) for n in q_nodes}
    got = run_model(other, feeds, sorted(set(wanted.values())))
    rows = []
    for n in q_nodes:
        v, w = n.input[0], wanted[n.output[0]]
        s, lo_v, hi_v = scales[v]
        if w not in got:
            rows.append((v, float("nan"), 0, 0))
            continue
        a = np.round(np.clip(vals[v], lo_v, hi_v) / s)
        b = np.round(np.clip(got[w], lo_v, hi_v) / s)
        d = np.abs(a - b)
        rows.append((v, float(d.max()), int(np.sum(d > 1)), d.size))
    return rows, left


def main():
    model = sys.argv[1]
    lo, hi = (float(sys.argv[2]), float(sys.argv[3])) if len(sys.argv) > 3 else (-1.0, 1.0)
    with tempfile.TemporaryDirectory() as t:
        variants = {
            "convinteger": [],
            "convinteger-int8": ["--activation-type", "int8"],
            "convinteger-u8": ["--format", "convinteger-u8"],
            "qdq-u8": ["--format", "qdq-u8"],
            "qdq": ["--format", "qdq"],
            "qdq-u8 --qdq-outputs all": ["--format", "qdq-u8", "--qdq-outputs", "all"],
            "qdq --qdq-outputs all": ["--format", "qdq", "--qdq-outputs", "all"],
        }
        pairs = [
            ("convinteger-u8", "convinteger"),
            ("qdq-u8", "convinteger"),
            ("qdq", "convinteger-int8"),
            ("qdq-u8 --qdq-outputs all", "convinteger"),
            ("qdq --qdq-outputs all", "convinteger-int8"),
        ]
        paths = {}
        for k, args in variants.items():
            paths[k] = os.path.join(t, k.replace(" ", "_") + ".onnx")
            subprocess.run([BIN, "quantize", model, "-o", paths[k], *args], check=True,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        s = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
        shape = [d if isinstance(d, int) and d > 0 else 2 for d in s.get_inputs()[0].shape]
        x = np.random.default_rng(3).uniform(lo, hi, shape).astype(np.float32)
        print(os.path.basename(model))
        for f, b in pairs:
            base = onnx.load(paths[b])
            scales = q_scales(base)
            order = [n.input[0] for n in base.graph.node if n.op_type == "QuantizeLinear"]
            ref, ref_out = run(paths[b], order, x)
            other = q_scales(onnx.load(paths[f]))
            got, out = run(paths[f], order, x)
            steps = []
            beyond = total = 0
            per = []
            for v in order:
                if v in got and v in ref:
                    # Values beyond the representable range saturate in the QuantizeLinear:
                    # compare what it sees after saturation.
                    s, lo_v, hi_v = scales[v]
                    step = max(s, other.get(v, scales[v])[0])
                    # Compare the levels the QuantizeLinear produces (ONNX rounds half to even).
                    d = (np.round(np.clip(ref[v], lo_v, hi_v) / s) - np.round(np.clip(got[v], lo_v, hi_v) / s)) * s
                    steps.append(float(np.max(np.abs(d))) / step)
                    per.append(int(np.sum(np.abs(d) > step * 1.0001)))
                    beyond += per[-1]
                    total += d.size
            if os.environ.get("VERBOSE"):
                print("   ", " ".join(f"{v}:{st:.1f}:{b}" for v, st, b in zip([v for v in order if v in got and v in ref], steps, per)))
            d_out = float(np.max(np.abs(ref_out - out)))
            rows, left = forced_steps(paths[b], paths[f], x)
            missing = [r[0] for r in rows if np.isnan(r[1])]
            assert not missing, f"{f}: not found: {missing}"
            worst = max(rows, key=lambda r: r[1])
            print(f"  {f:25s} vs {b:17s} same quantized inputs: {len(rows)} tensors, max "
                  f"{worst[1]:.0f} level(s) ({worst[0]}), elements beyond one level "
                  f"{sum(r[2] for r in rows)}/{sum(r[3] for r in rows)}; extra quantization points {len(left)}")
            if os.environ.get("VERBOSE"):
                print("    extra:", left)
            print(f"  {f:25s} vs {b:17s} end to end: first tensor {steps[0]:.2f} steps, all {len(steps)} tensors "
                  f"max {max(steps):.2f} (median {np.median(steps):.2f}), elements beyond one step "
                  f"{beyond}/{total} ({100 * beyond / max(total, 1):.3f} %); output max |diff| {d_out:.3g}")


if __name__ == "__main__":
    main()
