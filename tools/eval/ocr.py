#!/usr/bin/env python3
"""Float vs int8 on the PP-OCRv4 text detector and recogniser, in ONNX Runtime.

Detector (`--task det`): the pages of `ocr/pages/` and `photos/page.png`, RGB, resized to
640×640, (x/255 − 0.5)/0.5. Text = pixels of the probability map above 0.3; boxes = 4-connected
components of it whose mean probability is at least 0.5 (and at least 10 pixels). Reports, per
int8 model, how many of the float model's boxes an int8 box matches at IoU ≥ 0.5, and the IoU of
the two text masks (all pages together), and the map's SQNR.

Recogniser (`--task rec`): the 40 lines of `ocr/textlines/`, RGB, resized to height 48 keeping
the aspect ratio (width at most 320), (x/255 − 0.5)/0.5, zero-padded on the right to 320.
Greedy CTC (argmax per step, merge repeats, drop the blank, index 0) over the character list in
the model's metadata key `character`. Reports lines read exactly as the float model reads them,
lines equal to the label, per-step argmax agreement, and the output's SQNR.

`--save-npy DIR` also writes the preprocessed inputs as `.npy` files (one per input), which
`isquant validate FLOAT INT8 DIR --per-layer` takes.

Usage:
    python tools/eval/ocr.py --task det FLOAT.onnx INT8.onnx [INT8.onnx ...] [--data-dir ../shared/data]
    python tools/eval/ocr.py --task rec FLOAT.onnx INT8.onnx [...] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent.parent


def session(path: str):
    import onnxruntime as ort

    o = ort.SessionOptions()
    o.intra_op_num_threads = 2
    o.log_severity_level = 3
    return ort.InferenceSession(path, o, providers=["CPUExecutionProvider"])


def det_inputs(data: Path, size: int = 640) -> tuple[list[str], np.ndarray]:
    from PIL import Image

    files = sorted((data / "ocr" / "pages").glob("*.png")) + [data / "photos" / "page.png"]
    xs = []
    for f in files:
        im = Image.open(f).convert("RGB").resize((size, size), Image.BILINEAR)
        x = np.asarray(im, dtype=np.float32) / 255.0
        xs.append(((x - 0.5) / 0.5).transpose(2, 0, 1))
    return [f.name for f in files], np.stack(xs)


def rec_inputs(data: Path) -> tuple[list[str], list[str], np.ndarray]:
    from PIL import Image

    d = data / "ocr" / "textlines"
    rows = [l.split("\t", 1) for l in (d / "labels.tsv").read_text().splitlines() if l.strip()]
    xs = []
    for name, _ in rows:
        im = Image.open(d / name).convert("RGB")
        w = min(320, max(1, int(np.ceil(im.width * 48 / im.height))))
        im = im.resize((w, 48), Image.BILINEAR)
        x = (np.asarray(im, dtype=np.float32) / 255.0 - 0.5) / 0.5
        pad = np.zeros((48, 320, 3), dtype=np.float32)
        pad[:, :w] = x
        xs.append(pad.transpose(2, 0, 1))
    return [r[0] for r in rows], [r[1] for r in rows], np.stack(xs)


def run(path: str, x: np.ndarray, batch: int) -> np.ndarray:
    s = session(path)
    name = s.get_inputs()[0].name
    fixed = s.get_inputs()[0].shape[0]
    step = fixed if isinstance(fixed, int) and fixed > 0 else batch
    return np.concatenate([s.run(None, {name: x[i:i + step]})[0] for i in range(0, len(x), step)])


def sqnr(ref: np.ndarray, got: np.ndarray) -> float:
    noise = float(np.sum((ref.astype(np.float64) - got) ** 2))
    return float("inf") if noise == 0 else 10 * np.log10(float(np.sum(ref.astype(np.float64) ** 2)) / noise)


def components(mask: np.ndarray) -> list[np.ndarray]:
    """4-connected components of a boolean map, as arrays of flat indices."""
    h, w = mask.shape
    seen = np.zeros_like(mask, dtype=bool)
    flat = mask.ravel()
    out = []
    for start in np.flatnonzero(flat):
        if seen.flat[start]:
            continue
        stack, comp = [start], []
        seen.flat[start] = True
        while stack:
            p = stack.pop()
            comp.append(p)
            y, x = divmod(p, w)
            for q, ok in ((p - w, y > 0), (p + w, y < h - 1), (p - 1, x > 0), (p + 1, x < w - 1)):
                if ok and flat[q] and not seen.flat[q]:
                    seen.flat[q] = True
                    stack.append(q)
        out.append(np.array(comp))
    return out


def boxes(prob: np.ndarray, thresh: float = 0.3, box_thresh: float = 0.5) -> list[tuple[int, int, int, int]]:
    h, w = prob.shape
    out = []
    for comp in components(prob > thresh):
        if len(comp) < 10 or prob.ravel()[comp].mean() < box_thresh:
            continue
        ys, xs = np.divmod(comp, w)
        out.append((int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1))
    return out


def iou(a, b) -> float:
    ix = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union else 0.0


def matched(ref: list, got: list, at: float = 0.5) -> int:
    """Float boxes matched one to one by an int8 box at IoU ≥ `at` (greedy, best IoU first)."""
    pairs = sorted(((iou(r, g), i, j) for i, r in enumerate(ref) for j, g in enumerate(got)), reverse=True)
    used_r, used_g, n = set(), set(), 0
    for v, i, j in pairs:
        if v < at:
            break
        if i in used_r or j in used_g:
            continue
        used_r.add(i)
        used_g.add(j)
        n += 1
    return n


def ctc(probs: np.ndarray, chars: list[str]) -> tuple[str, np.ndarray]:
    idx = probs.argmax(-1)
    out, prev = [], -1
    for k in idx:
        if k != prev and k != 0 and k < len(chars):
            out.append(chars[k])
        prev = k
    return "".join(out), idx


def characters(path: str) -> list[str]:
    s = session(path)
    meta = s.get_modelmeta().custom_metadata_map
    lines = meta.get("character", "").split("\n")
    # PaddleOCR's dictionary: the blank, the listed characters, then a space.
    return ["<blank>"] + lines + [" "]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--task", choices=["det", "rec"], required=True)
    ap.add_argument("float")
    ap.add_argument("int8", nargs="*")
    ap.add_argument("--data-dir", default=str(ROOT.parent / "shared" / "data"))
    ap.add_argument("--size", type=int, default=640, help="detector input size (square)")
    ap.add_argument("--json")
    ap.add_argument("--save-npy", help="write the preprocessed inputs here as .npy files")
    a = ap.parse_args()
    data = Path(a.data_dir)
    report = {"task": a.task, "float": a.float, "models": []}
    if a.task == "det":
        names, x = det_inputs(data, a.size)
        if a.save_npy:
            os.makedirs(a.save_npy, exist_ok=True)
            for n, xi in zip(names, x):
                np.save(os.path.join(a.save_npy, n.replace(".png", ".npy")), xi[None])
        ref = run(a.float, x, 1)[:, 0]
        ref_boxes = [boxes(p) for p in ref]
        total = sum(len(b) for b in ref_boxes)
        print(f"float: {total} text boxes on {len(names)} pages ({a.size}x{a.size})")
        for q in a.int8:
            got = run(q, x, 1)[:, 0]
            got_boxes = [boxes(p) for p in got]
            m = sum(matched(r, g) for r, g in zip(ref_boxes, got_boxes))
            mr, mg = ref > 0.3, got > 0.3
            miou = float((mr & mg).sum() / max(1, (mr | mg).sum()))
            row = {"model": q, "boxes_matched": m, "float_boxes": total,
                   "int8_boxes": sum(len(b) for b in got_boxes), "mask_iou": miou,
                   "sqnr_db": sqnr(ref, got)}
            report["models"].append(row)
            print(f"{Path(q).name}: {m}/{total} float boxes matched at IoU >= 0.5 "
                  f"({row['int8_boxes']} int8 boxes), text-mask IoU {miou:.4f}, map SQNR {row['sqnr_db']:.2f} dB")
    else:
        names, labels, x = rec_inputs(data)
        if a.save_npy:
            os.makedirs(a.save_npy, exist_ok=True)
            for n, xi in zip(names, x):
                np.save(os.path.join(a.save_npy, n.replace(".png", ".npy")), xi[None])
        chars = characters(a.float)
        ref = run(a.float, x, 8)
        ref_text = [ctc(p, chars) for p in ref]
        exact = sum(t == l for (t, _), l in zip(ref_text, labels))
        print(f"float: {exact}/{len(labels)} lines equal to the label")
        for q in a.int8:
            got = run(q, x, 8)
            got_text = [ctc(p, chars) for p in got]
            same = sum(g[0] == r[0] for g, r in zip(got_text, ref_text))
            right = sum(g[0] == l for g, l in zip(got_text, labels))
            steps = float(np.mean([np.mean(g[1] == r[1]) for g, r in zip(got_text, ref_text)]))
            row = {"model": q, "same_as_float": same, "lines": len(labels), "equal_to_label": right,
                   "argmax_agreement": steps, "sqnr_db": sqnr(ref, got),
                   "examples": [(r[0], g[0]) for r, g in zip(ref_text, got_text) if r[0] != g[0]][:5]}
            report["models"].append(row)
            print(f"{Path(q).name}: {same}/{len(labels)} lines as float reads them, {right} equal to the label, "
                  f"per-step argmax agreement {100 * steps:.2f} %, SQNR {row['sqnr_db']:.2f} dB")
            for r, g in row["examples"]:
                print(f"    float {r!r}  int8 {g!r}")
    if a.json:
        Path(a.json).write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
