#!/usr/bin/env python3
"""Single-layer models timed in tract: float Conv against ConvInteger, depthwise and not.

Writes, into OUT_DIR, one model per (layer, form): a depthwise 3x3 layer (96 channels at
112x112), two 1x1 layers and a dense 3x3 layer, each as a float `Conv` and as
`QuantizeLinear -> ConvInteger -> Cast -> Mul`, plus the depthwise layer in the exact f32 form
isquant hands to tract (`Cast -> Conv -> Mul` on integer values), then prints tract's median
latency of each (batch 1, one thread) with `target/release/examples/tract_latency`.

Usage (from the repository root; needs `pip install onnx numpy` and
`cargo build --release --example tract_latency`):
    python3 tools/formats/tract_layers.py [OUT_DIR]
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto as T
from onnx import helper as h
from onnx import numpy_helper as nh


def save(path: Path, nodes, inits, c: int, hw: int) -> None:
    g = h.make_graph(nodes, path.stem, [h.make_tensor_value_info("x", T.FLOAT, [1, c, hw, hw])],
                     [h.make_tensor_value_info("y", T.FLOAT, None)], inits)
    m = h.make_model(g, opset_imports=[h.make_opsetid("", 13)])
    m.ir_version = 8
    onnx.save(m, str(path))


def layer(out: Path, name: str, c: int, o: int, hw: int, k: int, group: int, form: str) -> Path:
    rng = np.random.default_rng(0)
    shape = (o, c // group, k, k)
    s = nh.from_array(np.array(0.05, np.float32), "s")
    zp = nh.from_array(np.array(0, np.uint8), "zp")
    path = out / f"{name}_{form}.onnx"
    if form == "float":
        w = nh.from_array(rng.normal(size=shape).astype(np.float32), "w")
        save(path, [h.make_node("Conv", ["x", "w"], ["y"], group=group, pads=[k // 2] * 4)], [w], c, hw)
    elif form == "convinteger":
        w = nh.from_array(rng.integers(-127, 128, size=shape).astype(np.int8), "w")
        save(path, [h.make_node("QuantizeLinear", ["x", "s", "zp"], ["xq"]),
                    h.make_node("ConvInteger", ["xq", "w"], ["yi"], group=group, pads=[k // 2] * 4),
                    h.make_node("Cast", ["yi"], ["yf"], to=T.FLOAT),
                    h.make_node("Mul", ["yf", "s"], ["y"])], [w, s, zp], c, hw)
    else:  # "f32-exact": the form isquant hands tract for grouped ConvInteger
        w = nh.from_array(rng.integers(-127, 128, size=shape).astype(np.float32), "w")
        save(path, [h.make_node("QuantizeLinear", ["x", "s", "zp"], ["xq"]),
                    h.make_node("Cast", ["xq"], ["xf"], to=T.FLOAT),
                    h.make_node("Conv", ["xf", "w"], ["yf"], group=group, pads=[k // 2] * 4),
                    h.make_node("Mul", ["yf", "s"], ["y"])], [w, s, zp], c, hw)
    return path


def main() -> None:
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "target/tract_layers")
    out.mkdir(parents=True, exist_ok=True)
    latency = "target/release/examples/tract_latency"
    layers = [("depthwise3x3_96x112", 96, 96, 112, 3, 96), ("pointwise_96to24x56", 96, 24, 56, 1, 1),
              ("pointwise_384to64x14", 384, 64, 14, 1, 1), ("dense3x3_64x56", 64, 64, 56, 3, 1)]
    for name, c, o, hw, k, group in layers:
        forms = ["float", "convinteger"] + (["f32-exact"] if group > 1 else [])
        for form in forms:
            p = layer(out, name, c, o, hw, k, group, form)
            ms = subprocess.run([latency, str(p), f"1,{c},{hw},{hw}", "20"], capture_output=True,
                                text=True, check=True).stdout.strip()
            print(f"{name:24} {form:12} {ms}")


if __name__ == "__main__":
    main()
