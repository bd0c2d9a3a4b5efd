"""Prototype (numpy + ONNX Runtime, not part of isquant): CLE with the noise objective on the
BN-folded MobileNetV2, with per-channel statistics from a seeded noise pass instead of BN.
Writes the equalized float model; quantize it with `isquant quantize OUT --equalize off`.

    python tools/eval/experiments/cle_noise_folded.py noise|dfq OUT.onnx [N_SIGMAS] [MODEL]
    PINK=1 python ...   # 1/f noise (any exponent) instead of N(0,1) for the statistics

docs/experiments.md ("Why the folded exports do not get it") has the measured results.
"""
import sys, numpy as np, onnx
import os as _os
_ROOT = _os.path.dirname(_os.path.dirname(_os.path.dirname(_os.path.dirname(_os.path.abspath(__file__)))))
SHARED = _os.environ.get("MODELS_DIR", _os.path.join(_ROOT, "..", "shared", "models"))
from onnx import numpy_helper, helper
import onnxruntime as ort
method = sys.argv[1]; out = sys.argv[2]
NS = float(sys.argv[3]) if len(sys.argv) > 3 else 4.0
src = sys.argv[4] if len(sys.argv) > 4 else _os.path.join(SHARED, "mobilenetv2-imagenet-folded.onnx")
m = onnx.load(src)
g = m.graph
I = {t.name: numpy_helper.to_array(t).astype(np.float64) for t in g.initializer}
const = {n.output[0]: numpy_helper.to_array(n.attribute[0].t) for n in g.node if n.op_type == "Constant"}
cons = {}
for n in g.node:
    for x in n.input: cons.setdefault(x, []).append(n)
# noise stats of every conv output
conv_out = [n.output[0] for n in g.node if n.op_type == "Conv"]
conv_in = [n.input[0] for n in g.node if n.op_type == "Conv"]
m2 = onnx.load(src)
for t in set(conv_out + conv_in):
    if t not in [o.name for o in m2.graph.output]:
        m2.graph.output.append(helper.make_tensor_value_info(t, onnx.TensorProto.FLOAT, None))
sess = ort.InferenceSession(m2.SerializeToString(), providers=["CPUExecutionProvider"])
rng = np.random.default_rng(0)
x = rng.standard_normal((32, 3, 224, 224))
import os
if os.environ.get("PINK"):
    fy = np.fft.fftfreq(224)[:, None]; fx = np.fft.rfftfreq(224)[None, :]
    f = np.sqrt(fx * fx + fy * fy); f[0, 0] = 1.0 / 224
    amp = 1.0 / f ** float(os.environ["PINK"])
    x = np.fft.irfft2(np.fft.rfft2(x) * amp, s=(224, 224))
    x = (x - x.mean(axis=(2, 3), keepdims=True)) / x.std(axis=(2, 3), keepdims=True)
x = x.astype(np.float32)
names = [o.name for o in sess.get_outputs()]
vals = dict(zip(names, sess.run(None, {"input": x})))
st = {}
for t in set(conv_out + conv_in):
    v = vals[t].astype(np.float64)
    st[t] = (v.mean(axis=(0, 2, 3)), v.std(axis=(0, 2, 3)), (v * v).mean(axis=(0, 2, 3)))
pairs = []
for n in g.node:
    if n.op_type != "Conv": continue
    y = n.output[0]
    c = cons.get(y, [])
    if len(c) != 1: continue
    nx = c[0]; act = None
    if nx.op_type == "Clip":
        act = nx
        c2 = cons.get(nx.output[0], [])
        if len(c2) != 1: continue
        nx = c2[0]
    if nx.op_type != "Conv": continue
    pairs.append((n, act, nx))
print(len(pairs), "pairs", file=sys.stderr)
S = {p[0].name: np.ones(I[p[0].input[1]].shape[0]) for p in pairs}
def W(n): return I[n.input[1]]
def grp(n):
    for a in n.attribute:
        if a.name == "group": return a.i
    return 1
def inputs_energy(A):
    """per output channel of A: sum_{j,k} E[x_j^2] (current scaling of A's input)"""
    w = W(A); o, il = w.shape[:2]; k = int(np.prod(w.shape[2:]))
    e_in = st[A.input[0]][2] / in_scale(A) ** 2
    gA = grp(A)
    if gA == 1: return np.full(o, e_in.sum() * k)
    return np.array([e_in[(i // (o // gA)) * il:(i // (o // gA) + 1) * il].sum() * k for i in range(o)])
def in_scale(A):
    # accumulated scale applied to A's input channels (divided), from a pair whose B is A
    for p in pairs:
        if p[2].name == A.name: return S[p[0].name]
    return np.ones(st[A.input[0]][0].shape[0])
def act_range(A, act, s):
    mu, sd, e2 = st[A.output[0]]
    hi = np.maximum(np.abs(mu - NS * sd), np.abs(mu + NS * sd))
    if act is not None: hi = np.minimum(np.maximum(mu + NS * sd, 0), 6.0)
    return hi / s
def post_energy(A, act, s):
    mu, sd, e2 = st[A.output[0]]
    if act is not None:
        v = vals[act.output[0]].astype(np.float64); e2 = (v * v).mean(axis=(0, 2, 3))
    return e2 / s ** 2
for it in range(30):
    worst = 0
    for A, act, B in pairs:
        wa, wb = W(A), W(B)
        o = wa.shape[0]
        r1 = np.abs(wa).reshape(o, -1).max(1)
        gB = grp(B)
        if gB == 1:
            r2 = np.abs(wb).transpose(1, 0, 2, 3).reshape(o, -1).max(1)
            gg = (wb ** 2).transpose(1, 0, 2, 3).reshape(o, -1).sum(1)
            nK = np.full(o, wb.shape[0] * np.prod(wb.shape[2:]))
        else:  # depthwise B
            r2 = np.abs(wb).reshape(o, -1).max(1)
            gg = (wb ** 2).reshape(o, -1).sum(1)
            nK = np.full(o, np.prod(wb.shape[2:]))
        Sa = S[A.name]
        if method == "dfq":
            s = np.sqrt(r1 / r2)
        else:
            EA = inputs_energy(A)
            a = act_range(A, act, Sa)
            e = post_energy(A, act, Sa)
            qa = 255 if act is not None else 127
            def obj(s):
                M1 = (r1 / s).max() / 127; Ma = (a / s).max() / qa; M2 = (r2 * s).max() / 127
                return (s * s * gg * (M1 ** 2 * EA + Ma ** 2)).sum() + M2 ** 2 * (nK * e / s ** 2).sum()
            s0 = np.sqrt(r1 / np.maximum(r2, 1e-30)); s0[(r1 == 0) | (r2 == 0)] = 1
            R1d, Rad, R2 = (r1 / s0).max(), (a / s0).max(), (r2 * s0).max()
            best = (obj(s0), s0)
            grid = np.exp(np.linspace(-3, 3, 61))
            d = (R2 / 127) ** 2 * nK * e
            hi = np.where(r2 > 0, R2 / np.maximum(r2, 1e-30), 1e30)
            for f1 in grid:
                R1 = R1d * f1
                lo1 = r1 / R1
                if (lo1 > hi * (1 + 1e-9)).any(): continue
                for fa in grid:
                    Ra = Rad * fa
                    lo = np.maximum(lo1, a / Ra)
                    if (lo > hi * (1 + 1e-9)).any(): continue
                    c = gg * ((R1 / 127) ** 2 * EA + (Ra / qa) ** 2)
                    st_ = np.where((c > 0) & (d > 0), (d / np.maximum(c, 1e-300)) ** 0.25, s0)
                    sc = np.clip(st_, lo, hi)
                    sc = np.where(sc > 0, sc, 1.0)
                    v = obj(sc)
                    if v < best[0]: best = (v, sc)
            s = best[1]
            if it == 0: print(A.name, 'obj ones', obj(np.ones(o)), 'dfq', obj(np.sqrt(r1/r2)), 'nm', best[0], 'logs range', np.log(s).min(), np.log(s).max(), file=sys.stderr)
        worst = max(worst, np.abs(np.log(s)).max())
        wa /= s.reshape(-1, *[1] * (wa.ndim - 1))
        I[A.input[2]] /= s
        if gB == 1: wb *= s.reshape(1, -1, 1, 1)
        else: wb *= s.reshape(-1, 1, 1, 1)
        S[A.name] = Sa * s
    print(it, worst, file=sys.stderr)
    if worst < 1e-3: break
# write back
for t in g.initializer:
    if t.name in I: t.CopyFrom(numpy_helper.from_array(I[t.name].astype(np.float32), t.name))
new_nodes = []
for A, act, B in pairs:
    if act is None: continue
    bound = (6.0 / S[A.name]).astype(np.float32).reshape(1, -1, 1, 1)
    bn = act.output[0] + "_bound"
    g.initializer.append(numpy_helper.from_array(bound, bn))
    ro = act.output[0] + "_relu"
    relu = helper.make_node("Relu", [act.input[0]], [ro], name=act.name + "_relu")
    mn = helper.make_node("Min", [ro, bn], [act.output[0]], name=act.name + "_min")
    new_nodes.append((act, relu, mn))
nodes = list(g.node)
del g.node[:]
rep = {id(a): (r, mm) for a, r, mm in new_nodes}
for n in nodes:
    if id(n) in rep: g.node.extend(rep[id(n)])
    else: g.node.append(n)
onnx.save(m, out)
# check float unchanged
s2 = ort.InferenceSession(out, providers=["CPUExecutionProvider"])
s1 = ort.InferenceSession(src, providers=["CPUExecutionProvider"])
a = s1.run(None, {"input": x[:4]})[0]; b = s2.run(None, {"input": x[:4]})[0]
print("float change", np.abs(a - b).max() / np.abs(a).max(), file=sys.stderr)
