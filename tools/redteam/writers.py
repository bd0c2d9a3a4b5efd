#!/usr/bin/env python3
"""Concurrent writers and kill -9 against one `-o` (issue 17's acceptance), standard library only.

Two models A and B (different fixtures) are written to the same output:
  * `race`: each round starts two `isquant convert` runs at once, A→OUT and B→OUT;
  * `kill`: each round starts `isquant quantize A -o OUT` (a few hundred ms of work) and sends
    SIGKILL after a random delay, over an OUT that holds B from the round before.
After every round, whatever OUT names must be a complete model whose weights are its own: read
back inline (`isquant convert OUT -o check.onnx`) it is byte-identical to A's or B's inline form
(race), or to B's or to a completed quantize of A (kill, checked by loading it). No temporary
file may remain after a round in which every process exited normally.

Usage: python3 tools/redteam/writers.py [--rounds 100] [--bin target/release/isquant]
Runs both modes with and without --external-data and prints one line per mode.
"""

import argparse
import glob
import os
import random
import signal
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def run(bin_, *args, check=True):
    r = subprocess.run([bin_, *args], capture_output=True, text=True)
    if check and r.returncode != 0:
        raise RuntimeError(f"{args}: exit {r.returncode}: {r.stderr}")
    return r


def inline(bin_, path, out):
    run(bin_, "convert", path, "-o", out)
    with open(out, "rb") as f:
        return f.read()


def temps(d):
    return glob.glob(os.path.join(d, ".*isquant-tmp"))


def race(bin_, d, a, b, ext, rounds):
    ia, ib = inline(bin_, a, os.path.join(d, "ia.onnx")), inline(bin_, b, os.path.join(d, "ib.onnx"))
    out = os.path.join(d, "race.onnx")
    bad = leftover = 0
    for _ in range(rounds):
        extra = ["--external-data"] if ext else []
        ps = [subprocess.Popen([bin_, "convert", src, "-o", out, *extra], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE) for src in (a, b)]
        codes = [p.wait() for p in ps]
        if any(c != 0 for c in codes):
            bad += 1
            continue
        try:
            got = inline(bin_, out, os.path.join(d, "check.onnx"))
        except RuntimeError:
            got = None  # does not even load: a model paired with another run's data
        if got not in (ia, ib):
            bad += 1
        if temps(d):
            leftover += 1
    return bad, leftover


def kill(bin_, d, a, b, ext, rounds):
    out = os.path.join(d, "kill.onnx")
    ib = inline(bin_, b, os.path.join(d, "ib.onnx"))
    bad = 0
    finished = 0
    rng = random.Random(17)
    extra = ["--external-data"] if ext else []
    # Kill at a uniform moment within one run's duration, so that most kills land mid-run.
    t = time.monotonic()
    run(bin_, "quantize", a, "-o", os.path.join(d, "timing.onnx"), "--guard", "off", *extra)
    span = time.monotonic() - t
    for _ in range(rounds):
        run(bin_, "convert", b, "-o", out, *extra)
        p = subprocess.Popen([bin_, "quantize", a, "-o", out, "--guard", "off", *extra], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(0.0, span))
        if p.poll() is None:
            p.send_signal(signal.SIGKILL)
        code = p.wait()
        finished += code == 0
        try:
            got = inline(bin_, out, os.path.join(d, "check.onnx"))
        except RuntimeError:
            bad += 1
            continue
        if got == ib:
            continue  # the old model, whole
        # else it must be a complete quantized A: it loads and runs in tract
        r = run(bin_, "validate", a, out, "--synthetic", "2", check=False)
        if r.returncode not in (0, 1):
            bad += 1
        # the killed run's temporaries may stay (a killed process cannot clean up); remove them
        for t in temps(d):
            os.remove(t)
    return bad, finished


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=100)
    ap.add_argument("--bin", default=os.path.join(ROOT, "target", "release", "isquant"))
    a_ = ap.parse_args()
    a = os.path.join(ROOT, "fixtures", "fmnist-small-bn.onnx")
    b = os.path.join(ROOT, "fixtures", "usps-cnn-bn.onnx")
    failed = False
    for ext in (False, True):
        with tempfile.TemporaryDirectory() as d:
            bad, left = race(a_.bin, d, a, b, ext, a_.rounds)
            print(f"race{' --external-data' if ext else ''}: {a_.rounds} rounds, {bad} with a broken or mixed output, {left} with a temporary file left")
            failed |= bad > 0 or left > 0
        with tempfile.TemporaryDirectory() as d:
            bad, fin = kill(a_.bin, d, a, b, ext, a_.rounds)
            print(f"kill -9{' --external-data' if ext else ''}: {a_.rounds} rounds ({fin} finished before the kill), {bad} with a broken output")
            failed |= bad > 0
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
