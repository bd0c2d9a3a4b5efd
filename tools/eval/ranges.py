"""Data-free activation ranges where BN statistics do not reach (issue 5): SQuant's U[0,1) noise
rule vs the BN rule on per-channel noise statistics, over noise distributions and widths N, on
the models that have no BN left (MobileNetV2 folded and dynamo exports, mnist-cnn) and usps (one
tensor past its BNs). W8A8 per-tensor SQuant, bias correction on, `--equalize off` except the
last row (the defaults), in ONNX Runtime.

Usage: python tools/eval/ranges.py [--isquant target/release/isquant]
Prints a markdown table.
"""

import argparse
import os
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import eval as ev  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SHARED = os.path.join(ROOT, "..", "shared", "models")
MODELS = [
    ("mobilenetv2-imagenet-folded", "imagenet-agreement"),
    ("mobilenetv2-imagenet-dynamo", "imagenet-agreement"),
    ("mnist-cnn", "mnist"),
    ("usps-cnn-bn", "usps"),
]
CONFIGS = [
    ("SQuant rule (U[0,1), α = 25σ)", ["--act-ranges", "noise", "--equalize", "off"]),
    ("per-channel, U[0,1), N = 6", ["--noise-input", "uniform", "--noise-sigmas", "6", "--equalize", "off"]),
    ("per-channel, U[0,1), N = 8", ["--noise-input", "uniform", "--noise-sigmas", "8", "--equalize", "off"]),
    ("per-channel, N(0,1), N = 3", ["--noise-sigmas", "3", "--equalize", "off"]),
    ("per-channel, N(0,1), N = 4 (default)", ["--equalize", "off"]),
    ("per-channel, N(0,1), N = 6", ["--noise-sigmas", "6", "--equalize", "off"]),
    ("defaults (+ CLE where `auto` turns it on)", []),
]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--isquant", default=os.path.join(ROOT, "target", "release", "isquant"))
    a = ap.parse_args()
    print("| model | ranges | accuracy | agreement | SQNR dB |")
    print("|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for name, dataset in MODELS:
            src = os.path.join(SHARED, name + ".onnx")
            paths = []
            for k, (_, flags) in enumerate(CONFIGS):
                out = os.path.join(tmp, f"{name}-{k}.onnx")
                subprocess.run([a.isquant, "quantize", src, "-o", out, "--guard", "off", "--format", "convinteger-u8", *flags],
                               check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                paths.append(out)
            rep = ev.evaluate(src, paths, dataset=dataset)
            for (label, _), m in zip(CONFIGS, rep["models"][1:]):
                acc = "-" if m["accuracy"] is None else f"{100 * m['accuracy']:.2f}%"
                print(f"| {name} | {label} | {acc} | {100 * m['agreement']:.2f}% | {m['sqnr_db']:.2f} |")
                sys.stdout.flush()


if __name__ == "__main__":
    main()
