"""isquant: data-free int8 quantization of ONNX CNNs, from Python.

    import isquant
    result = isquant.quantize("model.onnx", "model-int8.onnx", input_range=(-2.118, 2.640))
    print(result.summary)                 # what `isquant quantize` prints
    result.model                          # the int8 model (bytes), also in model-int8.onnx
    result.report["layers"]               # the JSON report (`--report`) as a dict

The functions run the code of the `isquant` command (installed with this package): the same
options (a flag `--weight-bits` is the keyword `weight_bits`; `None` leaves the command
line's default), the same checks and messages, byte-identical models. A model is a path, the
`bytes` of an encoded model or an `onnx.ModelProto`; `validate` also takes numpy arrays as
inputs. Nothing is printed. The GIL is released while the work runs; `progress`, if given, is
called with the name of each stage (from other threads too, with the GIL held).

Errors raise a subclass of `isquant.Error`, whose message is the one the command prints after
`error:` and whose `exit_code` is the command's: 2 for `FileError`, `ModelError`,
`ConfigError`, `LimitError` and `TractError`; 1 for `BelowThresholdError` (a validation
threshold missed); 3 for `GuardFailedError` (the model was written, but the accuracy guard
failed). The last two carry the finished result as `.result`.

numpy and onnx are not needed to import isquant: they are used only when you pass their
objects.
"""

from __future__ import annotations

import os
from json import loads as _json_loads
from typing import TYPE_CHECKING

from . import _isquant

if TYPE_CHECKING:  # typing and dataclasses are not imported at run time: `import isquant` stays fast
    from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

    PathLike = Union[str, os.PathLike[str]]
    #: A model: a path, the bytes of an encoded ModelProto, or an onnx.ModelProto.
    Model = Union[PathLike, bytes, Any]
    Progress = Callable[[str], Any]

__version__: str = _isquant.__version__

__all__ = [
    "quantize",
    "validate",
    "inspect",
    "Result",
    "Validation",
    "Inspection",
    "Error",
    "FileError",
    "ModelError",
    "ConfigError",
    "LimitError",
    "TractError",
    "BelowThresholdError",
    "GuardFailedError",
    "__version__",
]

# ---------------------------------------------------------------------------------------------
# Errors


class Error(Exception):
    """An isquant error. ``str(error)`` is what the command line prints after ``error:``
    (the message, then one ``  caused by: ...`` line per cause); ``exit_code`` is the command
    line's exit code for it."""

    exit_code: int = 2

    def __init__(self, message: str, causes: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.message = message
        self.causes = list(causes)

    def __str__(self) -> str:
        return "\n".join([self.message] + [f"  caused by: {c}" for c in self.causes])


class FileError(Error):
    """A file cannot be read or written, or is not a regular file."""


class ModelError(Error):
    """The model is not a valid ONNX model, or one isquant cannot use."""


class ConfigError(Error):
    """An option, an input or a request that cannot be carried out as given (the message names
    the command-line flag, e.g. ``--weight-bits`` for ``weight_bits``)."""


class LimitError(Error):
    """A size from the model, a file or an option is over one of isquant's limits."""


class TractError(Error):
    """tract (the Rust inference engine isquant runs models in) failed."""


class BelowThresholdError(Error):
    """A validation threshold was missed (exit code 1). ``result`` holds the finished
    `Result` (from `quantize`) or `Validation` (from `validate`)."""

    exit_code = 1

    def __init__(self, message: str, result: Any) -> None:
        super().__init__(message)
        self.result = result


class GuardFailedError(Error):
    """The accuracy guard failed (exit code 3): the model was made (and written to the output)
    but does not meet the guard's threshold. ``result`` holds the `Result`."""

    exit_code = 3

    def __init__(self, message: str, result: Any) -> None:
        super().__init__(message)
        self.result = result


_KINDS = {
    "file": FileError,
    "model": ModelError,
    "config": ConfigError,
    "limit": LimitError,
    "runtime": TractError,
}


def _call(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    try:
        return fn(*args, **kwargs)
    except _isquant.NativeError as e:
        kind, message, causes, _code = e.args
        raise _KINDS.get(kind, Error)(message, causes) from None


# ---------------------------------------------------------------------------------------------
# Results


class _Record:
    """Fields set once, compared by value, shown by name (a small frozen dataclass)."""

    __slots__ = ()

    def __init__(self, *values: Any) -> None:
        for name, value in zip(self.__slots__, values):
            object.__setattr__(self, name, value)

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"{type(self).__name__} is read-only")

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and all(
            getattr(self, n) == getattr(other, n) for n in self.__slots__
        )

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        fields = ", ".join(f"{n}={getattr(self, n)!r}" for n in self.__slots__)
        return f"{type(self).__name__}({fields})"


class Validation(_Record):
    """Float and int8 compared in tract (what ``isquant validate`` measures).

    ``metrics``: the metrics as ``--json`` writes them (a dict); ``summary``: the text the
    command line prints; ``failures``: the thresholds missed (empty: passed)."""

    __slots__ = ("metrics", "summary", "failures")
    metrics: Dict[str, Any]
    summary: str
    failures: List[str]

    @property
    def passed(self) -> bool:
        return not self.failures


class Result(_Record):
    """What `quantize` made.

    ``model``: the int8 model (an encoded ModelProto), the bytes ``isquant quantize -o``
    writes with the same options (with ``external_data=True`` the file keeps its weights
    apart; these bytes hold every tensor inline). ``report``: the JSON report (what
    ``--report`` writes) as a dict. ``summary``: the summary and the guard's lines, as the
    command line prints them. ``validation``: the `Validation`, when ``validate`` or
    ``validate_inputs`` was given. ``output``: where the model was written, if anywhere."""

    __slots__ = ("model", "report", "summary", "validation", "output")
    model: bytes
    report: Dict[str, Any]
    summary: str
    validation: Optional[Validation]
    output: Optional[str]

    def __repr__(self) -> str:
        layers = len(self.report.get("layers", []))
        return f"<isquant.Result: {len(self.model)} bytes, {layers} layers, output={self.output!r}>"

    def save(self, path: PathLike) -> None:
        """Writes the int8 model to ``path`` (a plain write; ``output=`` writes atomically
        and refuses to overwrite the input)."""
        with open(path, "wb") as f:
            f.write(self.model)


class Inspection(_Record):
    """What ``isquant inspect`` reports on a model: ``report`` (``--json``, a dict) and
    ``summary`` (the text)."""

    __slots__ = ("report", "summary")
    report: Dict[str, Any]
    summary: str


# ---------------------------------------------------------------------------------------------
# Arguments


def _model(model: Model) -> Union[str, bytes]:
    if isinstance(model, (bytes, bytearray, memoryview)):
        return bytes(model)
    if isinstance(model, (str, os.PathLike)):
        return os.fsdecode(os.fspath(model))
    if hasattr(model, "SerializeToString"):  # onnx.ModelProto (not imported: optional)
        return model.SerializeToString()
    raise TypeError(
        f"a model is a path, bytes or an onnx.ModelProto, not {type(model).__name__}"
    )


def _text(v: Any) -> str:
    if isinstance(v, (str, os.PathLike)):
        return os.fsdecode(os.fspath(v))
    return str(v)


def _value(name: str, v: Any) -> Union[bool, str, List[str]]:
    """A keyword argument as the command line's flag value."""
    if isinstance(v, bool):
        return v
    if isinstance(v, (str, os.PathLike)):
        return _text(v)
    if name == "input_range":
        lo, hi = v
        return f"{lo}:{hi}"
    if name in ("input_shape", "mean", "std") and isinstance(v, (list, tuple)):
        return ",".join(str(x) for x in v)
    if name in ("resize", "crop") and isinstance(v, (list, tuple)):
        h, w = v
        return f"{h}x{w}"
    if isinstance(v, (list, tuple)):
        return [_text(x) for x in v]
    return str(v)


def _options(values: Dict[str, Any]) -> List[Tuple[str, Any]]:
    return [(k, _value(k, v)) for k, v in values.items() if v is not None]


def _is_array(x: Any) -> bool:
    return hasattr(x, "__array__") and hasattr(x, "shape")


def _array(x: Any) -> Tuple[List[int], bytes]:
    import numpy as np  # only when arrays are passed

    a = np.ascontiguousarray(np.asarray(x, dtype=np.float32))
    return list(a.shape), a.tobytes()


# ---------------------------------------------------------------------------------------------
# Commands


def quantize(
    model: Model,
    output: Optional[PathLike] = None,
    *,
    format: Optional[str] = None,
    target: Optional[str] = None,
    weight_bits: Optional[int] = None,
    act_bits: Optional[int] = None,
    input_range: Union[None, str, Tuple[float, float]] = None,
    skip: Union[None, str, Sequence[str]] = None,
    keep_first_float: Optional[bool] = None,
    keep_last_float: Optional[bool] = None,
    granularity: Optional[str] = None,
    correct_bias: Union[None, bool, str] = None,
    equalize: Optional[str] = None,
    absorb_bias: Union[None, bool, str] = None,
    equalize_by: Optional[str] = None,
    relu6: Optional[str] = None,
    rounding: Optional[str] = None,
    act_ranges: Optional[str] = None,
    bn_sigmas: Optional[float] = None,
    noise_sigmas: Optional[float] = None,
    noise_input: Optional[str] = None,
    noise_batch: Optional[int] = None,
    noise_seed: Optional[int] = None,
    input_shape: Union[None, str, Sequence[int]] = None,
    calibrate: Optional[PathLike] = None,
    percentile: Optional[float] = None,
    qdq_outputs: Optional[str] = None,
    activation_type: Optional[str] = None,
    report: Optional[PathLike] = None,
    validate: Optional[bool] = None,
    validate_inputs: Union[None, PathLike, Sequence[PathLike]] = None,
    guard: Optional[str] = None,
    guard_min_sqnr: Optional[float] = None,
    guard_max_float: Optional[int] = None,
    verbose: Optional[bool] = None,
    external_data: Optional[bool] = None,
    preset: Optional[str] = None,
    resize: Union[None, int, str, Tuple[int, int]] = None,
    crop: Union[None, int, str, Tuple[int, int]] = None,
    crop_first: Optional[bool] = None,
    mean: Union[None, float, str, Sequence[float]] = None,
    std: Union[None, float, str, Sequence[float]] = None,
    scale: Optional[float] = None,
    bgr: Optional[bool] = None,
    gray: Optional[bool] = None,
    layout: Optional[str] = None,
    label_regex: Optional[str] = None,
    labels: Optional[PathLike] = None,
    limit: Optional[int] = None,
    synthetic: Optional[int] = None,
    batch: Optional[int] = None,
    per_layer: Optional[bool] = None,
    json: Optional[PathLike] = None,
    save_tensors: Optional[PathLike] = None,
    min_agreement: Optional[float] = None,
    min_sqnr: Optional[float] = None,
    max_accuracy_drop: Optional[float] = None,
    progress: Optional[Progress] = None,
) -> Result:
    """Quantizes a float model to int8 without data: ``isquant quantize MODEL [-o OUTPUT]``.

    ``model``: a path, bytes or an ``onnx.ModelProto``. ``output``: where to write the int8
    model (atomically, never over the input); ``None`` writes nothing. Every other keyword is
    the command line's flag of the same name (``isquant quantize --help`` documents them all;
    ``None`` keeps its default): e.g. ``format="qdq"``, ``target="ort"``, ``weight_bits=6``,
    ``input_range=(-2.118, 2.640)``, ``skip=["/classifier/*"]``, ``correct_bias=False``,
    ``preset="imagenet"``. ``report``, ``json`` and ``save_tensors`` write files as their
    flags do; ``validate``/``validate_inputs`` also compare float and int8 (``.validation``).
    ``progress(stage)`` is called at each stage.

    Raises `BelowThresholdError` (a validation threshold missed) or `GuardFailedError` (the
    accuracy guard failed) with the finished `Result` as ``.result``, and the other `Error`
    subclasses for bad input.
    """
    values = dict(locals())
    for k in ("model", "output", "progress", "values"):
        values.pop(k, None)
    out = None if output is None else _text(output)
    model_bytes, report_json, summary, validation, code = _call(
        _isquant.quantize, _model(model), out, _options(values), progress
    )
    v = None
    if validation is not None:
        metrics, vsummary, failures = validation
        v = Validation(_json_loads(metrics), vsummary, list(failures))
    result = Result(model_bytes, _json_loads(report_json), summary, v, out)
    if code == 1 and v is not None:
        raise BelowThresholdError("below threshold: " + "; ".join(v.failures), result)
    if code == 3:
        raise GuardFailedError(
            "the guard failed: the int8 model was made"
            + (f" and written to {out}" if out else "")
            + "; see the guard lines of .result.summary",
            result,
        )
    return result


def validate(
    float_model: Model,
    int8_model: Model,
    inputs: Any = None,
    *,
    labels: Union[None, PathLike, Sequence[int]] = None,
    preset: Optional[str] = None,
    resize: Union[None, int, str, Tuple[int, int]] = None,
    crop: Union[None, int, str, Tuple[int, int]] = None,
    crop_first: Optional[bool] = None,
    mean: Union[None, float, str, Sequence[float]] = None,
    std: Union[None, float, str, Sequence[float]] = None,
    scale: Optional[float] = None,
    bgr: Optional[bool] = None,
    gray: Optional[bool] = None,
    layout: Optional[str] = None,
    label_regex: Optional[str] = None,
    limit: Optional[int] = None,
    synthetic: Optional[int] = None,
    batch: Optional[int] = None,
    per_layer: Optional[bool] = None,
    json: Optional[PathLike] = None,
    save_tensors: Optional[PathLike] = None,
    min_agreement: Optional[float] = None,
    min_sqnr: Optional[float] = None,
    max_accuracy_drop: Optional[float] = None,
    progress: Optional[Progress] = None,
) -> Validation:
    """Runs a float model and its int8 version in tract on the same inputs and compares them:
    ``isquant validate FLOAT INT8 [INPUTS]``.

    ``inputs``: ``None`` (seeded synthetic inputs), a path or a list of paths (images, ``.npy``
    or IDX files, folders), or a numpy array or a list of them: an array with as many
    dimensions as the model input is a batch, one with a dimension less is one input.
    ``labels``: a labels file (as ``--labels``), or with arrays one class index per input.
    The other keywords are the flags of ``isquant validate``.

    Raises `BelowThresholdError` with the `Validation` as ``.result`` when ``min_agreement``,
    ``min_sqnr`` or ``max_accuracy_drop`` is missed.
    """
    values = dict(locals())
    for k in ("float_model", "int8_model", "inputs", "labels", "progress", "values"):
        values.pop(k, None)
    paths: Optional[List[str]] = None
    arrays: Optional[List[Tuple[List[int], bytes]]] = None
    if inputs is None:
        paths = []
    elif isinstance(inputs, (str, os.PathLike)):
        paths = [_text(inputs)]
    elif _is_array(inputs):
        arrays = [_array(inputs)]
    else:
        items = list(inputs)
        if items and all(_is_array(x) for x in items):
            arrays = [_array(x) for x in items]
        elif all(isinstance(x, (str, os.PathLike)) for x in items):
            paths = [_text(x) for x in items]
        else:
            raise TypeError("inputs: a path, a list of paths, an array or a list of arrays")
    label_list: Optional[List[int]] = None
    if isinstance(labels, (str, os.PathLike)):
        values["labels"] = labels
    elif labels is not None:
        if arrays is None:
            raise TypeError(
                "labels as a list go with arrays; with files give a labels file or label_regex"
            )
        label_list = [int(x) for x in labels]
    metrics, summary, failures = _call(
        _isquant.validate,
        _model(float_model),
        _model(int8_model),
        paths,
        arrays,
        label_list,
        _options(values),
        progress,
    )
    result = Validation(_json_loads(metrics), summary, list(failures))
    if failures:
        raise BelowThresholdError("below threshold: " + "; ".join(failures), result)
    return result


def inspect(model: Model) -> Inspection:
    """What a model holds: ``isquant inspect MODEL`` (``.summary``) and ``--json``
    (``.report``)."""
    report, summary = _call(_isquant.inspect, _model(model))
    return Inspection(_json_loads(report), summary)

