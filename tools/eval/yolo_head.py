#!/usr/bin/env python3
"""Class-score SQNR and detections of the YOLO-style head of tests/heads.rs, in ONNX Runtime.

Write the float head, quantize it with the flags to compare, then run this:

    ISQUANT_SAVE_YOLO_HEAD=/tmp/yolo.onnx cargo test --release --test main heads
    isquant quantize /tmp/yolo.onnx -o unit.onnx --preset unit --guard off
    python3 tools/eval/yolo_head.py /tmp/yolo.onnx unit.onnx [more int8 models]

Inputs: the 20 CIFAR-10 fixture images, x/255. Prints, per int8 model, the SQNR of the class
scores (channels 4..6 of `output0`), the float scores above 0.25, and how many of those (or of
the int8 ones) the other model does not have, ties within 0.01 of 0.25 aside, as the test
counts them.
"""

import glob
import os
import sys

import numpy as np
import onnxruntime as ort
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main():
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    paths = sorted(glob.glob(os.path.join(ROOT, "fixtures", "data", "cifar10-20", "*.png")))
    xs = [np.asarray(Image.open(p).convert("RGB"), dtype=np.float32).transpose(2, 0, 1)[None] / 255
          for p in paths]
    f = ort.InferenceSession(sys.argv[1])
    for q in sys.argv[2:]:
        s = ort.InferenceSession(q)
        sig = noise = 0.0
        fl, ql, score = set(), set(), {}
        for k, x in enumerate(xs):
            a = f.run(None, {"images": x})[0]
            b = s.run(None, {"images": x})[0]
            sig += float(np.sum(a[:, 4:] ** 2))
            noise += float(np.sum((a[:, 4:] - b[:, 4:]) ** 2))
            for c in range(a.shape[1] - 4):
                for an in range(a.shape[2]):
                    score[(k, an, c)] = a[0, 4 + c, an]
                    if a[0, 4 + c, an] > 0.25:
                        fl.add((k, an, c))
                    if b[0, 4 + c, an] > 0.25:
                        ql.add((k, an, c))
        differ = [t for t in fl ^ ql if abs(score[t] - 0.25) > 0.01]
        print(f"{q}: class scores SQNR {10 * np.log10(sig / noise):.2f} dB, "
              f"float scores above 0.25: {len(fl)}, lost or added in int8: {len(differ)}")


if __name__ == "__main__":
    main()
