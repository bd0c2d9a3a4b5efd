"""How far noise-pass statistics are from the BN statistics the exporter folded away: median over
MobileNetV2's conv outputs of |ln(std / |gamma|)| for white, pink and real-image inputs.

    python tools/eval/experiments/noise_vs_bn_stats.py

docs/experiments.md ("Why the folded exports do not get it") has the measured results.
"""
import numpy as np, onnx, onnxruntime as ort, sys
import os as _os
_ROOT = _os.path.dirname(_os.path.dirname(_os.path.dirname(_os.path.dirname(_os.path.abspath(__file__)))))
SHARED = _os.environ.get("MODELS_DIR", _os.path.join(_ROOT, "..", "shared", "models"))
from onnx import numpy_helper, helper
bnm = onnx.load(_os.path.join(SHARED, "mobilenetv2-imagenet-bn.onnx"))
I = {t.name: numpy_helper.to_array(t) for t in bnm.graph.initializer}
bns = [n for n in bnm.graph.node if n.op_type == "BatchNormalization"]
src = _os.path.join(SHARED, "mobilenetv2-imagenet-folded.onnx")
m = onnx.load(src)
convs = [n.output[0] for n in m.graph.node if n.op_type == "Conv"]
for t in convs: m.graph.output.append(helper.make_tensor_value_info(t, onnx.TensorProto.FLOAT, None))
sess = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
rng = np.random.default_rng(0)
def pink(alpha, n=16):
    x = rng.standard_normal((n, 3, 224, 224))
    if alpha:
        fy = np.fft.fftfreq(224)[:, None]; fx = np.fft.rfftfreq(224)[None, :]
        f = np.sqrt(fx * fx + fy * fy); f[0, 0] = 1.0 / 224
        x = np.fft.irfft2(np.fft.rfft2(x) * f ** -alpha, s=(224, 224))
        x = (x - x.mean(axis=(2, 3), keepdims=True)) / x.std(axis=(2, 3), keepdims=True)
    return x.astype(np.float32)
sys.path.insert(0, _os.path.join(_ROOT, "tools", "eval")); import eval as ev  # noqa: E402
real = ev.load_dataset_full("imagenet-agreement").inputs[::10][:30]
for name, x in [("white", pink(0)), ("pink0.5", pink(0.5)), ("pink1", pink(1)), ("pink1.5", pink(1.5)), ("real", real)]:
    outs = sess.run(convs, {"input": x})
    errs_m, errs_s = [], []
    for bn, v in zip(bns, outs):
        gam, bet = I[bn.input[1]], I[bn.input[2]]
        sd = v.std(axis=(0, 2, 3)); mu = v.mean(axis=(0, 2, 3))
        errs_s.append(np.median(np.abs(np.log(sd / np.abs(gam)))))
        errs_m.append(np.median(np.abs(mu - bet) / np.abs(gam)))
    print(f"{name:8s} median |log(std/|gamma|)| over layers: mean {np.mean(errs_s):.3f}  first10 {np.round(errs_s[:10],2)}  mean-err/gamma {np.mean(errs_m):.3f}")
