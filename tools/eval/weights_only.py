#!/usr/bin/env python3
"""A float model whose Conv/MatMul/Gemm weights are replaced by their 8-bit round-to-nearest
values (symmetric, per output channel or per tensor), activations left float: how much of a
model's int8 loss the weights alone cause (docs/experiments.md).

Usage: python tools/eval/weights_only.py MODEL.onnx OUT.onnx {channel|tensor} [--bits 8]
"""

from __future__ import annotations

import argparse

import numpy as np
import onnx
from onnx import numpy_helper as nh


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("out")
    ap.add_argument("granularity", choices=["channel", "tensor"])
    ap.add_argument("--bits", type=int, default=8)
    a = ap.parse_args()
    m = onnx.load(a.model)
    q_max = 2 ** (a.bits - 1) - 1
    tensors = {t.name: t for t in m.graph.initializer}
    for n in m.graph.node:
        if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value":
            tensors[n.output[0]] = n.attribute[0].t
    done = 0
    for n in m.graph.node:
        if n.op_type not in ("Conv", "MatMul", "Gemm") or len(n.input) < 2:
            continue
        t = tensors.get(n.input[1])
        if t is None:
            continue
        w = nh.to_array(t)
        if n.op_type == "Conv":
            mx = np.abs(w).max(axis=tuple(range(1, w.ndim)), keepdims=True)
        elif n.op_type == "Gemm" and any(x.name == "transB" and x.i == 1 for x in n.attribute):
            mx = np.abs(w).max(axis=1, keepdims=True)
        else:
            mx = np.abs(w).max(axis=0, keepdims=True)
        if a.granularity == "tensor":
            mx = np.full_like(mx, np.abs(w).max())
        s = np.where(mx > 0, mx / q_max, 1.0)
        q = np.clip(np.round(w / s), -q_max, q_max) * s
        t.CopyFrom(nh.from_array(q.astype(w.dtype), t.name))
        done += 1
    onnx.save(m, a.out)
    print(f"{done} weights rounded to {a.bits} bits per {a.granularity}")


if __name__ == "__main__":
    main()
