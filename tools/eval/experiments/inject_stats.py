"""Experiment (numpy + ONNX Runtime, not part of isquant): give the BN-folded MobileNetV2 back
"BN statistics" measured on chosen inputs, by inserting an identity BatchNormalization after
every Conv (gamma = std, beta = mean = the measured mean, var = the measured var: the float
model is unchanged), then quantize it with isquant (default flags + FLAGS) and evaluate it
against the folded float model on the 300 imagenet-agreement views.

    python tools/eval/experiments/inject_stats.py KIND [isquant quantize flags ...]

KIND: real (30 of the evaluation images: an oracle, not data-free), white (N(0, 1)),
pink<a> (1/f^a amplitude spectrum, independent colour channels), nat<a> (1/f^a fields
coloured with the AlexNet ImageNet RGB PCA, then ImageNet-normalised: a data-free
natural-image prior). Environment: SPLIT=k LATE=KIND2 takes the statistics of convs >= k
from KIND2; VARX=f multiplies every variance by f; K=k gives only the first k convs a BN. Prints the median |ln(std/std_real)| of
the first 12 convs and the SQNR / agreement. docs/experiments.md ("Why the folded exports do not
get it") has the measured results.
"""
import os
import subprocess
import sys

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper, numpy_helper

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(HERE)))
sys.path.insert(0, os.path.join(ROOT, "tools", "eval"))
import eval as ev  # noqa: E402

MODELS = os.environ.get("MODELS_DIR", os.path.join(ROOT, "..", "shared", "models"))
ISQUANT = os.environ.get("ISQUANT", os.path.join(ROOT, "target", "release", "isquant"))
SRC = os.path.join(MODELS, "mobilenetv2-imagenet-folded.onnx")
OUT = os.path.join(ROOT, "target", "experiments")
rng = np.random.default_rng(0)


def field(alpha, n=32):
    x = rng.standard_normal((n, 3, 224, 224))
    if alpha:
        fy = np.fft.fftfreq(224)[:, None]
        fx = np.fft.rfftfreq(224)[None, :]
        f = np.sqrt(fx * fx + fy * fy)
        f[0, 0] = 1.0 / 224
        x = np.fft.irfft2(np.fft.rfft2(x) * f ** -alpha, s=(224, 224))
        x = (x - x.mean(axis=(2, 3), keepdims=True)) / x.std(axis=(2, 3), keepdims=True)
    return x


def inputs(kind):
    if kind == "real":
        return ev.load_dataset_full("imagenet-agreement").inputs[::10][:30].astype(np.float32)
    if kind == "white":
        return field(0).astype(np.float32)
    if kind.startswith("pink"):
        return field(float(kind[4:])).astype(np.float32)
    if kind.startswith("nat"):
        lam = np.array([0.2175, 0.0188, 0.0045])
        vec = np.array([[-0.5675, 0.7192, 0.4009], [-0.5808, -0.0045, -0.8140],
                        [-0.5836, -0.6948, 0.4203]])
        rgb = np.einsum("ck,nkhw->nchw", vec * np.sqrt(lam)[None, :], field(float(kind[3:])))
        return (rgb / np.array([0.229, 0.224, 0.225])[None, :, None, None]).astype(np.float32)
    raise SystemExit(f"unknown KIND {kind}")


def main():
    kind, flags = sys.argv[1], sys.argv[2:]
    m = onnx.load(SRC)
    g = m.graph
    convs = [n for n in g.node if n.op_type == "Conv"]
    names = [n.output[0] for n in convs]
    probe = onnx.load(SRC)
    for t in names:
        probe.graph.output.append(helper.make_tensor_value_info(t, onnx.TensorProto.FLOAT, None))
    sess = ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
    inp = sess.get_inputs()[0].name
    varx = float(os.environ.get("VARX", "1"))

    def stats(x):
        outs = [sess.run(names, {inp: x[i:i + 8]}) for i in range(0, len(x), 8)]
        vals = [np.concatenate([o[k] for o in outs]).astype(np.float64) for k in range(len(names))]
        return [(v.mean(axis=(0, 2, 3)), v.var(axis=(0, 2, 3)) * varx) for v in vals]

    st = stats(inputs(kind))
    if os.environ.get("LATE"):
        split = int(os.environ["SPLIT"])
        st = st[:split] + stats(inputs(os.environ["LATE"]))[split:]
    ref = stats(inputs("real"))
    with np.errstate(divide="ignore", invalid="ignore"):  # dead channels: 0/0
        err = [float(np.nanmedian(np.abs(0.5 * np.log(a[1] / b[1])))) for a, b in zip(st, ref)]
    print("median |ln(std/std_real)|, first 12 convs:", np.round(err[:12], 2))
    keep = int(os.environ.get("K", len(names)))
    nodes = list(g.node)
    del g.node[:]
    for n in nodes:
        if n.op_type != "Conv" or names.index(n.output[0]) >= keep:
            g.node.append(n)
            continue
        y = n.output[0]
        n.output[0] = y + "_prebn"
        g.node.append(n)  # (appends a copy: rename first)
        mu, var = st[names.index(y)]
        bn = [y + s for s in ("_gamma", "_beta", "_mean", "_var")]
        for name, arr in zip(bn, (np.sqrt(var + 1e-5), mu, mu, var)):
            g.initializer.append(numpy_helper.from_array(arr.astype(np.float32), name))
        g.node.append(helper.make_node("BatchNormalization", [y + "_prebn"] + bn, [y],
                                       name=n.name + "_bn", epsilon=1e-5))
    os.makedirs(OUT, exist_ok=True)
    with_bn = os.path.join(OUT, f"folded-{kind}-stats.onnx")
    onnx.save(m, with_bn)
    q = with_bn.replace(".onnx", "-int8.onnx")
    subprocess.run([ISQUANT, "quantize", with_bn, "-o", q, "--format", "convinteger-u8", *flags],
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    r = ev.evaluate(SRC, [q], dataset="imagenet-agreement")["models"][1]
    print(f"{kind} {' '.join(flags)}: SQNR {r['sqnr_db']:.2f} dB, agreement {100 * r['agreement']:.2f} %")


if __name__ == "__main__":
    main()
