"""PyTorch → isquant → ONNX Runtime, end to end (the README's Python example).

The float model is fixtures/fmnist-small-bn.onnx, a Fashion-MNIST CNN that `torch.onnx.export`
wrote (PyTorch, opset 13; the README shows the export call). isquant quantizes it without data,
for ONNX Runtime (`target="ort"`); ONNX Runtime runs the float and the int8 model on the first 200 Fashion-MNIST test images
(fixtures/data/fashion-mnist-200), preprocessed as in training (torchvision's ToTensor +
Normalize(0.2860, 0.3530)).

    python python/examples/pytorch_to_ort.py     # from the repository root
"""

import gzip
import os
import sys
import tempfile

import numpy as np
import onnxruntime as ort

import isquant

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DATA = os.path.join(ROOT, "fixtures", "data", "fashion-mnist-200")


def idx(name: str, offset: int) -> np.ndarray:
    with gzip.open(os.path.join(DATA, name)) as f:
        return np.frombuffer(f.read(), dtype=np.uint8, offset=offset)


mean, std = 0.2860, 0.3530
images = idx("t200-images-idx3-ubyte.gz", 16).reshape(-1, 1, 28, 28) / 255.0
x = ((images - mean) / std).astype(np.float32)
labels = idx("t200-labels-idx1-ubyte.gz", 8)

os.chdir(ROOT)
result = isquant.quantize(
    "fixtures/fmnist-small-bn.onnx",
    os.path.join(tempfile.mkdtemp(), "fmnist-int8.onnx"),
    input_range=((0 - mean) / std, (1 - mean) / std),  # what Normalize makes of pixels 0..1
    target="ort",  # the form ONNX Runtime runs fastest (the summary's `deploy` line)
)
print(result.summary)

float_model = ort.InferenceSession("fixtures/fmnist-small-bn.onnx", providers=["CPUExecutionProvider"])
int8_model = ort.InferenceSession(result.model, providers=["CPUExecutionProvider"])
ref = float_model.run(None, {"input": x})[0]
out = int8_model.run(None, {"input": x})[0]
print(
    f"onnxruntime {ort.__version__}, {len(x)} test images: "
    f"top-1 agreement {np.mean(ref.argmax(1) == out.argmax(1)):.1%}, "
    f"accuracy float {np.mean(ref.argmax(1) == labels):.1%}, int8 {np.mean(out.argmax(1) == labels):.1%}"
)
print(f"int8 model: {len(result.model)} bytes ({os.path.getsize('fixtures/fmnist-small-bn.onnx')} float)")
sys.exit(0)
