"""The issue-5 MobileNetV2 targets (W8A8 per-tensor): SQNR, top-1 agreement over the 300
imagenet-agreement views, and correct labels over the 20 labeled images and their flips, for the
BN, folded and dynamo forms, in ONNX Runtime.

    python tools/eval/targets.py [extra isquant quantize flags ...]

Uses target/release/isquant and ../shared/models beside the repository (ISQUANT, MODELS_DIR
override them); the quantized models go to target/targets/.
"""
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, HERE)
import eval as ev  # noqa: E402

ISQUANT = os.environ.get("ISQUANT", os.path.join(ROOT, "target", "release", "isquant"))
MODELS = os.environ.get("MODELS_DIR", os.path.join(ROOT, "..", "shared", "models"))


def main() -> int:
    flags = sys.argv[1:]
    out_dir = os.path.join(ROOT, "target", "targets")
    os.makedirs(out_dir, exist_ok=True)
    for form in ("bn", "folded", "dynamo"):
        src = os.path.join(MODELS, f"mobilenetv2-imagenet-{form}.onnx")
        out = os.path.join(out_dir, f"mobilenetv2-{form}.onnx")
        subprocess.run([ISQUANT, "quantize", src, "-o", out, "--guard", "off", "--format", "convinteger-u8", *flags],
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        rep = ev.evaluate(src, [out], dataset="imagenet-agreement")
        f, q = rep["models"]
        subsets = ("val20 centre", "val20 centre+flip")
        cf = sum(f["subsets"][s]["correct"] for s in subsets)
        cq = sum(q["subsets"][s]["correct"] for s in subsets)
        print(f"{form:7s} SQNR {q['sqnr_db']:.2f} dB, agreement {100 * q['agreement']:.2f} %, "
              f"20 labeled + flips: float {cf}/40, int8 {cq}/40 ({cf - cq} fewer)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
