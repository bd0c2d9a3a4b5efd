#!/usr/bin/env python3
"""ONNX Runtime's own `quantize_static`, calibrated on a directory of `.npy` inputs: the
calibrated peer isquant's data-free output is compared with (docs/experiments.md).

Weights stored as `Constant` nodes are moved to initializers first (ONNX Runtime quantizes
initializers only) and the model is converted to opset 13 (per-channel DequantizeLinear needs
`axis`). Writes one model per configuration: `OUT_DIR/ort-{pt,pc}-{MinMax,Entropy,Percentile}.onnx`,
int8 symmetric activations and weights, QDQ format.

Usage: python tools/eval/ort_static.py MODEL.onnx NPY_DIR OUT_DIR [--input NAME]
"""

from __future__ import annotations

import argparse
import glob
import os

import numpy as np
import onnx
from onnx import version_converter
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_static,
)


class Reader(CalibrationDataReader):
    def __init__(self, d: str, name: str):
        self.files = sorted(glob.glob(os.path.join(d, "*.npy")))
        self.name = name
        self.i = 0

    def get_next(self):
        if self.i >= len(self.files):
            return None
        x = np.load(self.files[self.i])
        self.i += 1
        return {self.name: x}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("npy_dir")
    ap.add_argument("out_dir")
    ap.add_argument("--input", default=None)
    a = ap.parse_args()
    os.makedirs(a.out_dir, exist_ok=True)
    m = onnx.load(a.model)
    keep = []
    for n in m.graph.node:
        if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value":
            t = n.attribute[0].t
            t.name = n.output[0]
            m.graph.initializer.append(t)
        else:
            keep.append(n)
    del m.graph.node[:]
    m.graph.node.extend(keep)
    if max(o.version for o in m.opset_import if o.domain in ("", "ai.onnx")) < 13:
        m = version_converter.convert_version(m, 13)
    prepared = os.path.join(a.out_dir, "prepared.onnx")
    onnx.save(m, prepared)
    name = a.input or m.graph.input[0].name
    for pc in (False, True):
        for meth in (CalibrationMethod.MinMax, CalibrationMethod.Entropy, CalibrationMethod.Percentile):
            out = os.path.join(a.out_dir, f"ort-{'pc' if pc else 'pt'}-{meth.name}.onnx")
            quantize_static(
                prepared,
                out,
                Reader(a.npy_dir, name),
                quant_format=QuantFormat.QDQ,
                per_channel=pc,
                activation_type=QuantType.QInt8,
                weight_type=QuantType.QInt8,
                calibrate_method=meth,
                extra_options={"ActivationSymmetric": True, "WeightSymmetric": True},
            )
            print(out, flush=True)


if __name__ == "__main__":
    main()
