#!/usr/bin/env python3
"""Quantize time of two isquant builds on the same models, interleaved in one run.

Runs `BEFORE quantize MODEL -o …` and `AFTER quantize MODEL -o …` alternately (so machine noise
hits both alike), RUNS times each, and prints per model the median wall time of each build,
the median of the stage times the summary's `time` line reports (fold-bn + equalize + squant +
ranges + emit: the pipeline without file I/O), and the ratios after/before.

Usage (from the repository root):
    python3 tools/compare_speed.py BEFORE_BIN AFTER_BIN MODEL.onnx [MODEL.onnx ...] [--runs 11]

The ResNet-50-sized model of `cargo bench --bench quantize` is written by
`cargo bench --bench quantize -- --write-model target/resnet50-bench.onnx`.
"""

from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import tempfile
import time
from pathlib import Path


def one(binary: str, model: str, out: Path) -> tuple[float, float]:
    start = time.perf_counter()
    p = subprocess.run([binary, "quantize", model, "-o", str(out)], capture_output=True, text=True)
    wall = time.perf_counter() - start
    if p.returncode not in (0, 3):  # 3: written, the accuracy guard failed
        raise SystemExit(f"{binary} failed on {model}: {p.stderr}")
    line = next((l for l in p.stdout.splitlines() if l.startswith("time ")), "")
    stages = sum(float(ms) for ms in re.findall(r"([0-9.]+) ms", line))
    return wall, stages / 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("before")
    ap.add_argument("after")
    ap.add_argument("models", nargs="+")
    ap.add_argument("--runs", type=int, default=11)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "q.onnx"
        print(f"{'model':<44} {'before s':>9} {'after s':>9} {'ratio':>6}   {'stages before':>13} {'after':>7} {'ratio':>6}")
        for model in a.models:
            one(a.before, model, out)  # warm the page cache
            wb, wa, sb, sa = [], [], [], []
            for _ in range(a.runs):
                w, s = one(a.before, model, out)
                wb.append(w)
                sb.append(s)
                w, s = one(a.after, model, out)
                wa.append(w)
                sa.append(s)
            mwb, mwa = statistics.median(wb), statistics.median(wa)
            msb, msa = statistics.median(sb), statistics.median(sa)
            print(f"{Path(model).name:<44} {mwb:9.3f} {mwa:9.3f} {mwa / mwb:6.3f}   {msb:13.3f} {msa:7.3f} {msa / msb:6.3f}")


if __name__ == "__main__":
    main()
