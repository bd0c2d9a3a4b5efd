"""Cross-check `isquant validate` (tract) against ONNX Runtime on the same preprocessed inputs.

For each case: quantize the model, run `isquant validate ... --save-tensors DIR --json J`, then
run the float and the int8 model in ONNX Runtime on DIR/inputs.npy and require:
  * float outputs: tract and ORT agree within 1e-4 of the output range;
  * int8 outputs: tract and ORT agree within a few quantization steps of the output range
    (tract rounds x*(1/s) where ORT divides, so exact ties can flip one LSB and spread);
  * the accuracies and top-1 agreement isquant printed equal the ones computed from ORT's
    outputs, allowing for a row whose top-2 logits are closer than that tolerance.
Prints one line per case and "N passed, M failed".
"""

import json
import os
import subprocess
import sys
import tempfile

import numpy as np
import onnxruntime as ort

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(ROOT, "target", "release", "isquant")
FIX = os.path.join(ROOT, "fixtures")
SHARED = os.path.join(ROOT, "..", "shared")

CASES = [
    ("mnist-cnn.onnx", os.path.join(FIX, "data", "mnist-20"), ["--preset", "mnist"]),
    ("usps-cnn-bn.onnx", os.path.join(FIX, "data", "mnist-20"),
     ["--preset", "mnist", "--crop", "20", "--crop-first", "--resize", "16x16", "--mean", "0.2471", "--std", "0.2994"]),
    ("cifar10-keras-bn-after-relu.onnx", os.path.join(FIX, "data", "cifar10-20"), ["--preset", "pixels"]),
]
if os.path.isdir(os.path.join(SHARED, "models")):
    fm = os.path.join(SHARED, "data", "fashion-mnist")
    CASES.append(("fmnist-small-bn.onnx", os.path.join(fm, "t10k-images-idx3-ubyte.gz"),
                  ["--preset", "fashion-mnist", "--labels", os.path.join(fm, "t10k-labels-idx1-ubyte.gz")]))
    CASES.append((os.path.join(SHARED, "models", "mobilenetv2-imagenet-bn.onnx"),
                  os.path.join(SHARED, "data", "imagenet-val-20"), ["--preset", "imagenet"]))


def ort_run(path, x):
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 2
    s = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
    name = s.get_inputs()[0].name
    fixed = s.get_inputs()[0].shape[0]
    if isinstance(fixed, int) and fixed > 0:
        return np.concatenate([s.run(None, {name: x[i:i + fixed]})[0] for i in range(0, len(x), fixed)])
    return s.run(None, {name: x})[0]


def check(model, data, flags, tmp):
    path = model if os.path.isabs(model) else os.path.join(FIX, model)
    base = os.path.basename(path)
    q = os.path.join(tmp, "q-" + base)
    r = subprocess.run([BIN, "quantize", path, "-o", q], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    assert r.returncode in (0, 3), f"quantize {base}: exit {r.returncode}"  # 3: guard failed, model written
    tdir = os.path.join(tmp, base + "-t")
    j = os.path.join(tmp, base + ".json")
    subprocess.run([BIN, "validate", path, q, data, *flags, "--label-regex", r"_(\d+)\.(png|jpg)$",
                    "--save-tensors", tdir, "--json", j], check=True, stdout=subprocess.DEVNULL)
    x = np.load(os.path.join(tdir, "inputs.npy"))
    tf, tq = np.load(os.path.join(tdir, "float.npy")), np.load(os.path.join(tdir, "int8.npy"))
    of, oq = ort_run(path, x), ort_run(q, x)
    scale = float(np.max(np.abs(of))) or 1.0
    df = float(np.max(np.abs(tf - of))) / scale
    dq = float(np.max(np.abs(tq - oq))) / scale
    assert df < 1e-4, f"float outputs differ by {df:.2e} of range"
    assert dq < 0.05, f"int8 outputs differ by {dq:.2e} of range"
    labels = []
    with open(os.path.join(tdir, "labels.txt")) as f:
        for line in f:
            labels.append(line.split()[1])
    lab = np.array([int(l) if l != "-" else -1 for l in labels])
    rep = json.load(open(j))["outputs"][0]
    tol = dq * scale

    def close_rows(o):  # rows whose top-2 are within the tract/ORT tolerance
        s = np.sort(o, axis=1)
        return s[:, -1] - s[:, -2] <= 2 * tol

    amb = close_rows(oq) | close_rows(tq)
    acc_f = float(np.mean(of.argmax(1)[lab >= 0] == lab[lab >= 0]))
    acc_q = float(np.mean(oq.argmax(1)[lab >= 0] == lab[lab >= 0]))
    agree = float(np.mean(of.argmax(1) == oq.argmax(1)))
    n = len(lab)
    slack = amb.sum() / n + 1e-9
    assert abs(acc_f - rep["float_accuracy"]) < 1e-9, f"float accuracy {acc_f} vs isquant {rep['float_accuracy']}"
    assert abs(acc_q - rep["int8_accuracy"]) <= slack, f"int8 accuracy {acc_q} vs isquant {rep['int8_accuracy']}"
    assert abs(agree - rep["top1_agreement"]) <= slack, f"agreement {agree} vs isquant {rep['top1_agreement']}"
    return (f"{n} inputs: float diff {df:.1e}, int8 diff {dq:.1e} of range; accuracy float {acc_f:.4f} "
            f"int8 {acc_q:.4f}, agreement {agree:.4f} (ORT) = isquant's ({amb.sum()} near-tie rows)")


def main():
    passed = failed = 0
    with tempfile.TemporaryDirectory() as tmp:
        for model, data, flags in CASES:
            try:
                print(f"ok   {os.path.basename(model)}: {check(model, data, flags, tmp)}")
                passed += 1
            except Exception as e:  # noqa: BLE001
                print(f"FAIL {os.path.basename(model)}: {e}")
                failed += 1
    print(f"onnxruntime {ort.__version__}")
    print(f"{passed} passed, {failed} failed")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
