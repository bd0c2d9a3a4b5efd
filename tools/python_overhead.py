#!/usr/bin/env python3
"""What quantizing from Python costs over the command line, on the same model, interleaved.

Each round runs, in turn:
  cli        `isquant quantize MODEL -o OUT` (the cargo binary), wall time of the process;
  python     a fresh `python -c "import isquant; isquant.quantize(MODEL, OUT)"`, wall time of
             the process (interpreter start and import included: what a script pays);
  in-process `isquant.quantize(MODEL, OUT)` timed inside this process (the call alone).
and checks that all three wrote the same bytes. Prints the median of each over the rounds and
the ratios to the CLI.

Usage (from the repository root, with the wheel installed in the interpreter that runs this):
    python tools/python_overhead.py target/release/isquant target/resnet50-bench.onnx --runs 9

The ResNet-50-sized model is written by
`cargo bench --bench quantize -- --write-model target/resnet50-bench.onnx`.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import isquant


def timed(cmd: list[str]) -> float:
    start = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if p.returncode not in (0, 3):
        raise SystemExit(f"{cmd[0]} failed: {p.stderr}")
    return wall


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("cli")
    ap.add_argument("model")
    ap.add_argument("--runs", type=int, default=9)
    a = ap.parse_args()
    times: dict[str, list[float]] = {"cli": [], "python": [], "in-process": []}
    with tempfile.TemporaryDirectory() as tmp:
        outs = {k: Path(tmp) / f"{k}.onnx" for k in times}
        code = f"import isquant; isquant.quantize({a.model!r}, {str(outs['python'])!r})"
        for r in range(a.runs):
            times["cli"].append(timed([a.cli, "quantize", a.model, "-o", str(outs["cli"])]))
            times["python"].append(timed([sys.executable, "-c", code]))
            start = time.perf_counter()
            try:
                isquant.quantize(a.model, outs["in-process"])
            except isquant.GuardFailedError:
                pass
            times["in-process"].append(time.perf_counter() - start)
            print(f"round {r + 1}: " + ", ".join(f"{k} {v[-1]:.3f} s" for k, v in times.items()), flush=True)
        ref = outs["cli"].read_bytes()
        same = all(outs[k].read_bytes() == ref for k in outs)
    cli = statistics.median(times["cli"])
    print(f"{a.model}: {len(ref)} bytes written by each, byte-identical: {same}")
    for k, v in times.items():
        m = statistics.median(v)
        print(f"  {k:<10} median {m:.3f} s (min {min(v):.3f}, max {max(v):.3f}), {m / cli:.3f}x the CLI")
    if not same:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
