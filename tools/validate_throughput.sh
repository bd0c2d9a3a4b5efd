#!/usr/bin/env bash
# Validation throughput: `isquant validate` (tract, both models) vs ONNX Runtime running the same
# two models on the same preprocessed inputs (saved by isquant with --save-tensors).
# Usage: PY=/path/to/python tools/validate_throughput.sh   (needs ../shared and onnxruntime)
set -euo pipefail
cd "$(dirname "$0")/.."
ISQ=${ISQUANT:-target/release/isquant}
PY=${PY:-python3}
S=../shared
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
run() { # name float data flags...
  local name=$1 float=$2 data=$3; shift 3
  "$ISQ" quantize "$float" -o "$T/$name-int8.onnx" >/dev/null 2>&1
  echo "== $name: isquant validate (tract)"
  "$ISQ" validate "$float" "$T/$name-int8.onnx" "$data" "$@" --save-tensors "$T/$name" | head -2
  echo "== $name: ONNX Runtime, same inputs"
  "$PY" - "$float" "$T/$name-int8.onnx" "$T/$name/inputs.npy" <<'PYEOF'
import sys, time, numpy as np, onnxruntime as ort
x = np.load(sys.argv[3])
total = 0.0
for path in sys.argv[1:3]:
    o = ort.SessionOptions(); o.log_severity_level = 3
    s = ort.InferenceSession(path, o, providers=["CPUExecutionProvider"])
    name = s.get_inputs()[0].name
    fixed = s.get_inputs()[0].shape[0]
    b = fixed if isinstance(fixed, int) and fixed > 0 else 16
    t = time.perf_counter()
    for i in range(0, len(x), b):
        s.run(None, {name: x[i:i + b]})
    total += time.perf_counter() - t
print(f"onnxruntime {ort.__version__}: {len(x)} inputs through both models in {total:.2f} s, {len(x) / total:.1f} inputs/s")
PYEOF
}
run fmnist fixtures/fmnist-small-bn.onnx "$S/data/fashion-mnist/t10k-images-idx3-ubyte.gz" --preset fashion-mnist
run mobilenetv2 "$S/models/mobilenetv2-imagenet-bn.onnx" "$S/data/imagenet-val-20" --preset imagenet
