#!/usr/bin/env python3
"""Behaviour check for refactors: quantize every model with two isquant binaries, compare.

Runs `isquant quantize` with default flags and with each `--format` and `--target` on every
model in `fixtures/` and `../shared/models/`, once with the BEFORE binary and once with the
AFTER binary, and compares the written models byte for byte. Where the bytes differ, the
models are decoded (the `onnx` package) and compared again with the metadata keys listed by
`--new-key` removed from the AFTER model (metadata a change adds on purpose, e.g. the layer
table); anything else that differs is reported with what differs.

A run that fails must fail the same way with both binaries (same exit code, same error text).
The text summary (stdout without the timing lines) is compared too and differences are listed:
they are expected where a change fixes the summary.

Usage (from the repository root; needs `pip install onnx`):

    python tools/compare_outputs.py BEFORE_BIN AFTER_BIN [--out DIR] [--new-key isquant.layers]
        [--only SUBSTRING] [--configs default,format=qdq,...] [--extended]

`--extended` runs the other options instead (granularity, bits, rounding, range sources,
equalization variants, bias correction, skips): every branch of the pipeline.

Prints one line per (model, configuration) and a summary; exit code 0 when every output is
identical (up to the listed keys), 1 otherwise.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared" / "models"

# Models whose input leaves dimensions other than the batch open need a shape for the noise
# pass. Small shapes keep the run short; the same shape is given to both binaries.
INPUT_SHAPES = {
    "ppocr-textline-cls.onnx": "1,3,48,192",
    "ppocrv4-det.onnx": "1,3,320,320",
    "ppocrv4-rec.onnx": "1,3,48,320",
}

CONFIGS = {
    "default": [],
    "format=convinteger": ["--format", "convinteger"],
    "format=convinteger-u8": ["--format", "convinteger-u8"],
    "format=qdq": ["--format", "qdq"],
    "format=qdq-u8": ["--format", "qdq-u8"],
    "target=tract": ["--target", "tract"],
    "target=ort": ["--target", "ort"],
    "target=ort-legacy": ["--target", "ort-legacy"],
    "target=tensorrt": ["--target", "tensorrt"],
}


# Options beyond the formats (`--extended`): every choice the pipeline branches on.
EXTENDED = {
    "per-channel": ["--granularity", "per-channel"],
    "w6a6-nearest": ["--weight-bits", "6", "--act-bits", "6", "--rounding", "nearest"],
    "w4a8-squant-k": ["--weight-bits", "4", "--rounding", "squant-k"],
    "act-ranges-bn": ["--act-ranges", "bn"],
    "act-ranges-noise": ["--act-ranges", "noise"],
    "noise-uniform": ["--noise-input", "uniform", "--noise-seed", "3"],
    "equalize-on-weights": ["--equalize", "on", "--equalize-by", "weights"],
    "equalize-off": ["--equalize", "off"],
    "relu6-relu": ["--equalize", "on", "--relu6", "relu"],
    "absorb-bias": ["--equalize", "on", "--absorb-bias", "on"],
    "no-bias-correction": ["--correct-bias", "off"],
    "input-range-keep-last": ["--input-range", "-2:2.5", "--keep-last-float"],
    "skip-glob": ["--skip", "*Conv*", "--keep-first-float"],
    "int8-acts-qdq-u8-all": ["--activation-type", "int8", "--format", "qdq-u8", "--qdq-outputs", "all"],
}


def models() -> list[Path]:
    """Every model file, deduplicated by content (fixtures repeat some shared models)."""
    found = sorted((ROOT / "fixtures").glob("*.onnx"))
    if SHARED.is_dir():
        found += sorted(SHARED.glob("*.onnx"))
    seen: dict[str, Path] = {}
    out = []
    for p in found:
        digest = hashlib.sha256(p.read_bytes()).hexdigest()
        if digest in seen:
            continue
        seen[digest] = p
        out.append(p)
    return out


def run(binary: str, model: Path, extra: list[str], out: Path) -> tuple[int, str, str, float]:
    args = [binary, "quantize", str(model), "-o", str(out)] + extra
    shape = INPUT_SHAPES.get(model.name)
    if shape:
        args += ["--input-shape", shape]
    start = time.perf_counter()
    p = subprocess.run(args, capture_output=True, text=True)
    return p.returncode, p.stdout, p.stderr, time.perf_counter() - start


def summary_lines(stdout: str) -> list[str]:
    """The summary without what changes from run to run (timings, paths, sizes of paths)."""
    keep = []
    for line in stdout.splitlines():
        if line.startswith(("time ", "wrote ", "isquant ")):
            continue
        keep.append(line)
    return keep


def error_text(stderr: str) -> str:
    return "\n".join(l for l in stderr.splitlines() if not l.startswith("isquant: "))


def describe_difference(before: Path, after: Path, new_keys: set[str]) -> str:
    """'' when the models are equal once `new_keys` are dropped from AFTER; else what differs."""
    import onnx

    a = onnx.load(str(before), load_external_data=False)
    b = onnx.load(str(after), load_external_data=False)
    extra = [p.key for p in b.metadata_props if p.key in new_keys]
    kept = [p for p in b.metadata_props if p.key not in new_keys]
    del b.metadata_props[:]
    b.metadata_props.extend(kept)
    if a.SerializeToString(deterministic=True) == b.SerializeToString(deterministic=True):
        return "" if extra else "equal after re-encoding"
    parts = []
    if a.ir_version != b.ir_version:
        parts.append(f"ir_version {a.ir_version} -> {b.ir_version}")
    ma = {p.key: p.value for p in a.metadata_props}
    mb = {p.key: p.value for p in b.metadata_props}
    for k in sorted(set(ma) | set(mb)):
        if ma.get(k) != mb.get(k):
            parts.append(f"metadata {k}")
    if [n.op_type for n in a.graph.node] != [n.op_type for n in b.graph.node]:
        parts.append("node list")
    elif a.graph.node != b.graph.node:
        parts.append("node names/attributes/wiring")
    ia = {t.name: t for t in a.graph.initializer}
    ib = {t.name: t for t in b.graph.initializer}
    if set(ia) != set(ib):
        parts.append("initializer names")
    else:
        changed = [k for k in ia if ia[k] != ib[k]]
        if changed:
            parts.append(f"{len(changed)} initializer(s), e.g. {changed[0]}")
    return ", ".join(parts) or "other fields"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("before")
    ap.add_argument("after")
    ap.add_argument("--out", default=str(ROOT / "target" / "compare-outputs"))
    ap.add_argument("--new-key", action="append", default=[],
                    help="metadata key the AFTER binary adds on purpose (repeatable)")
    ap.add_argument("--only", help="only models whose file name contains this")
    ap.add_argument("--configs", help="comma-separated subset of: " + ", ".join(CONFIGS))
    ap.add_argument("--extended", action="store_true",
                    help="the other options instead of the formats: " + ", ".join(EXTENDED))
    args = ap.parse_args()
    new_keys = set(args.new_key)
    table = EXTENDED if args.extended else CONFIGS
    configs = table
    if args.configs:
        configs = {k: table[k] for k in args.configs.split(",")}
    out = Path(args.out)
    (out / "before").mkdir(parents=True, exist_ok=True)
    (out / "after").mkdir(parents=True, exist_ok=True)
    rows = []
    differing = 0
    summary_changes = []
    t_before = t_after = 0.0
    for model in models():
        if args.only and args.only not in model.name:
            continue
        origin = "fixtures" if model.parent.name == "fixtures" else "shared"
        for name, extra in configs.items():
            tag = f"{model.stem}.{name.replace('=', '-')}.onnx"
            pb, pa = out / "before" / tag, out / "after" / tag
            for p in (pb, pa):
                if p.exists():
                    p.unlink()
            cb, ob, eb, tb = run(args.before, model, extra, pb)
            ca, oa, ea, ta = run(args.after, model, extra, pa)
            t_before += tb
            t_after += ta
            if cb != 0 or ca != 0:
                same = cb == ca and error_text(eb) == error_text(ea)
                verdict = f"both exit {cb}, same error" if same else f"DIFFERENT exit/error ({cb} vs {ca})"
                if not same:
                    differing += 1
                    verdict += f"\n      before: {error_text(eb)[:300]}\n      after:  {error_text(ea)[:300]}"
            elif pb.read_bytes() == pa.read_bytes():
                verdict = "identical bytes"
            else:
                why = describe_difference(pb, pa, new_keys)
                if why == "":
                    verdict = "identical except " + ", ".join(sorted(new_keys))
                else:
                    differing += 1
                    verdict = f"DIFFERENT: {why}"
            if cb == 0 and ca == 0 and summary_lines(ob) != summary_lines(oa):
                sb, sa = summary_lines(ob), summary_lines(oa)
                changed = [f"      - {l}" for l in sb if l not in sa] + [f"      + {l}" for l in sa if l not in sb]
                summary_changes.append(f"  {origin}/{model.name} [{name}]\n" + "\n".join(changed))
            line = f"{origin}/{model.name:<40} {name:<22} {verdict}  ({tb:.1f} s / {ta:.1f} s)"
            rows.append(line)
            print(line, flush=True)
    print()
    print(f"{len(rows)} runs, {differing} with differences; "
          f"total time before {t_before:.1f} s, after {t_after:.1f} s")
    if summary_changes:
        print("\nsummary text changes (stdout, timing lines removed):")
        print("\n".join(summary_changes))
    return 1 if differing else 0


if __name__ == "__main__":
    sys.exit(main())
