"""Latency of each isquant output format vs float and vs ONNX Runtime's own quantizer.

Models: a ResNet-50 (torchvision v1.5 layout, Conv+BN+Relu, random seeded weights with plausible
BN statistics, 25.6 M parameters), generated here with onnx.helper, and the real MobileNetV2
(../shared/models/mobilenetv2-imagenet-bn.onnx) when present.

For each model: isquant quantize --format convinteger | convinteger-u8 | qdq | qdq-u8 |
qdq --qdq-outputs all, --target ort and --target tensorrt (--preset imagenet, so every layer is
quantized), ORT's quantize_static (QDQ, int8/int8, per-tensor, calibrated on 8 random inputs);
then per row: how many convolutions ONNX Runtime runs in integers (QLinearConv in its optimized
graph), the median latency of 1x3x224x224 inference in ONNX Runtime with 1 and 2 intra-op
threads and in tract (1 thread), and, for MobileNetV2 when ../shared/data is there, the SQNR of
the logits against float on the 300 ImageNet views (tools/eval/eval.py).

Usage: python tools/formats/bench.py [--runs 20] [--out target/bench-formats]
Needs: onnx, onnxruntime, numpy, sympy (pip), target/release/isquant and
target/release/examples/tract_latency (cargo build --release --example tract_latency).
"""

import argparse
import os
import subprocess
import sys
import time

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BIN = os.path.join(ROOT, "target", "release", "isquant")
TRACT = os.path.join(ROOT, "target", "release", "examples", "tract_latency")


def resnet50(path):
    rng = np.random.default_rng(0)
    nodes, inits = [], []
    count = [0]

    def name(p):
        count[0] += 1
        return f"{p}{count[0]}"

    def conv_bn(x, cin, cout, k, stride, relu=True):
        w, n = name("w"), name("conv")
        fan = cin * k * k
        inits.append(numpy_helper.from_array(
            (rng.standard_normal((cout, cin, k, k)) * np.sqrt(2.0 / fan)).astype(np.float32), w))
        y = n + "_out"
        nodes.append(helper.make_node("Conv", [x, w], [y], name=n, pads=[k // 2] * 4,
                                      strides=[stride, stride], kernel_shape=[k, k]))
        b = name("bn")
        g, be, m, v = (b + s for s in ("_g", "_b", "_m", "_v"))
        inits.extend([numpy_helper.from_array(a.astype(np.float32), nm) for a, nm in (
            (rng.uniform(0.5, 1.5, cout), g), (rng.normal(0, 0.2, cout), be),
            (rng.normal(0, 0.5, cout), m), (rng.uniform(0.5, 2.0, cout), v))])
        z = b + "_out"
        nodes.append(helper.make_node("BatchNormalization", [y, g, be, m, v], [z], name=b))
        if relu:
            r = name("relu") + "_out"
            nodes.append(helper.make_node("Relu", [z], [r]))
            return r
        return z

    x = conv_bn("input", 3, 64, 7, 2)
    p = "pool_out"
    nodes.append(helper.make_node("MaxPool", [x], [p], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]))
    x, cin = p, 64
    for blocks, width, stride in ((3, 64, 1), (4, 128, 2), (6, 256, 2), (3, 512, 2)):
        for i in range(blocks):
            s = stride if i == 0 else 1
            y = conv_bn(x, cin, width, 1, 1)
            y = conv_bn(y, width, width, 3, s)
            y = conv_bn(y, width, width * 4, 1, 1, relu=False)
            short = conv_bn(x, cin, width * 4, 1, s, relu=False) if i == 0 else x
            a = name("add") + "_out"
            nodes.append(helper.make_node("Add", [y, short], [a]))
            r = name("relu") + "_out"
            nodes.append(helper.make_node("Relu", [a], [r]))
            x, cin = r, width * 4
    nodes.append(helper.make_node("GlobalAveragePool", [x], ["gap"]))
    nodes.append(helper.make_node("Flatten", ["gap"], ["flat"]))
    inits.append(numpy_helper.from_array((rng.standard_normal((1000, 2048)) * 0.02).astype(np.float32), "fc_w"))
    inits.append(numpy_helper.from_array(np.zeros(1000, np.float32), "fc_b"))
    nodes.append(helper.make_node("Gemm", ["flat", "fc_w", "fc_b"], ["logits"], transB=1))
    g = helper.make_graph(nodes, "resnet50", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 224, 224])],
                          [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 1000])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)], producer_name="isquant-bench")
    m.ir_version = 8
    onnx.save(m, path)
    return sum(int(np.prod(i.dims)) for i in inits)


def ort_quantize_static(src, dst):
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter([{"input": np.random.default_rng(i).uniform(-2.1, 2.6, (1, 3, 224, 224)).astype(np.float32)}
                            for i in range(8)])

        def get_next(self):
            return next(self.it, None)

    pre = dst + ".pre.onnx"
    quant_pre_process(src, pre)
    quantize_static(pre, dst, Reader(), quant_format=QuantFormat.QDQ,
                    activation_type=QuantType.QInt8, weight_type=QuantType.QInt8)


def ort_latency(path, threads, runs):
    o = ort.SessionOptions()
    o.intra_op_num_threads = threads
    o.log_severity_level = 3
    try:
        s = ort.InferenceSession(path, o, providers=["CPUExecutionProvider"])
    except Exception as e:  # noqa: BLE001 - report, do not stop
        return f"fails: {str(e).splitlines()[0][:60]}"
    x = np.random.default_rng(1).uniform(-2.1, 2.6, (1, 3, 224, 224)).astype(np.float32)
    name = s.get_inputs()[0].name
    for _ in range(3):
        s.run(None, {name: x})
    ts = []
    for _ in range(runs):
        t = time.perf_counter()
        s.run(None, {name: x})
        ts.append(time.perf_counter() - t)
    return 1e3 * float(np.median(ts))


def tract_latency(path, runs):
    if not os.path.exists(TRACT):
        return "n/a"
    r = subprocess.run([TRACT, path, "1,3,224,224", str(runs)], capture_output=True, text=True)
    if r.returncode != 0:
        return f"fails: {r.stderr.strip()[:60]}"
    return float(r.stdout.split()[0])


def fmt(v, base=None):
    if isinstance(v, str):
        return v
    return f"{v:.1f} ms" + (f" ({v / base:.2f}x)" if base else "")


def fused_convs(path):
    """Convolutions ONNX Runtime runs in integers: `QLinearConv` nodes of its optimized graph
    (ORT_ENABLE_ALL, CPU), and the float `Conv`/`FusedConv` nodes left, as "int/all"."""
    o = ort.SessionOptions()
    o.log_severity_level = 3
    o.intra_op_num_threads = 1
    o.optimized_model_filepath = path + ".ort-optimized.onnx"
    try:
        ort.InferenceSession(path, o, providers=["CPUExecutionProvider"])
    except Exception:  # noqa: BLE001 - the latency column reports the failure
        return "–"
    ops = [n.op_type for n in onnx.load(o.optimized_model_filepath).graph.node]
    q = ops.count("QLinearConv") + ops.count("ConvInteger")
    f = ops.count("Conv") + ops.count("FusedConv")
    return f"{q}/{q + f}"


def real_sqnr(float_path, paths):
    """SQNR (dB) of each model's logits against the float model's on the 300 ImageNet views of
    ../shared/data (tools/eval/eval.py, dataset imagenet-agreement), or {} without the data."""
    sys.path.insert(0, os.path.join(ROOT, "tools", "eval"))
    try:
        import eval as ev  # noqa: PLC0415 - optional, needs ../shared/data

        r = ev.evaluate(float_path, paths, dataset="imagenet-agreement",
                        data_dir=os.path.join(ROOT, "..", "shared", "data"), threads=2)
    except Exception as e:  # noqa: BLE001 - the column stays empty
        print(f"(no real-data SQNR: {e})", file=sys.stderr)
        return {}
    return {m["path"]: m["sqnr_db"] for m in r["models"][1:]}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--out", default=os.path.join(ROOT, "target", "bench-formats"))
    ap.add_argument("--models", default="resnet50,mobilenetv2",
                    help="comma-separated: resnet50 (generated), mobilenetv2 (../shared, BN form)")
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    models = {}
    wanted = a.models.split(",")
    if "resnet50" in wanted:
        rn = os.path.join(a.out, "resnet50.onnx")
        n = resnet50(rn)
        models["ResNet-50 (generated, %.1f M params)" % (n / 1e6)] = rn
    mnv2 = os.path.join(ROOT, "..", "shared", "models", "mobilenetv2-imagenet-bn.onnx")
    if "mobilenetv2" in wanted and os.path.exists(mnv2):
        models["MobileNetV2 (ImageNet weights)"] = mnv2
    print(f"onnxruntime {ort.__version__}, {os.cpu_count()} cores, median of {a.runs} runs, batch 1, 224x224\n")
    print("| model | variant | convs in integers (ORT) | ORT 1 thread | ORT 2 threads | tract 1 thread | SQNR dB (300 views) |")
    print("|---|---|---|---|---|---|---|")
    for label, path in models.items():
        stem = os.path.join(a.out, os.path.basename(path).replace(".onnx", ""))
        variants = [("float", path)]
        for f in ("--format convinteger", "--format convinteger-u8", "--format qdq", "--format qdq-u8",
                  "--format qdq --qdq-outputs all", "--target ort", "--target tensorrt"):
            out = f"{stem}-{f.replace('--', '').replace(' ', '-')}.onnx"
            subprocess.run([BIN, "quantize", path, "-o", out, *f.split(), "--preset", "imagenet"],
                           check=False, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            variants.append((f"isquant {f}", out))
        ortq = f"{stem}-ort-qdq.onnx"
        ort_quantize_static(path, ortq)
        variants.append(("ORT quantize_static (QDQ)", ortq))
        sq = real_sqnr(path, [p for _, p in variants[1:]]) if "MobileNetV2" in label else {}
        base1 = base2 = tbase = None
        for v, p in variants:
            l1, l2 = ort_latency(p, 1, a.runs), ort_latency(p, 2, a.runs)
            tl = tract_latency(p, a.runs) if not v.startswith("ORT") else "–"
            if v == "float":
                base1, base2, tbase = l1, l2, tl
            s_db = f"{sq[p]:.2f}" if p in sq else "–"
            print(f"| {label} | {v} | {fused_convs(p) if v != 'float' else '–'} | "
                  f"{fmt(l1, None if v == 'float' or isinstance(base1, str) else base1)} | "
                  f"{fmt(l2, None if v == 'float' or isinstance(base2, str) else base2)} | "
                  f"{fmt(tl, None if v == 'float' or isinstance(tbase, str) or isinstance(tl, str) else tbase)} | {s_db} |")
            sys.stdout.flush()


if __name__ == "__main__":
    main()
