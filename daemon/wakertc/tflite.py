"""openWakeWord's TFLite models run on NumPy: a reader for the file and a small interpreter.

Why not the TFLite interpreter (`ai_edge_litert`)? Memory, on a 512 MB Pi Zero 2 W: importing it
and preparing the three models costs ~21 MB of the daemon's resident memory (its 10 MB library,
XNNPACK's packed weights, one arena per model), where the models' own weights are ~3 MB. These
models are small float32 graphs of a few common operators, and the embedding model (where the
compute is) is a stack of valid convolutions and poolings along time: run as a stream, only the
rows its new 8 mel frames change are computed, ~8x less work than the whole 76-frame window that
the interpreter recomputes every 80 ms.

- `Model(path)` reads a `.tflite` file (a FlatBuffer, `tensorflow/lite/schema/schema.fbs`): its
  tensors, constant buffers, operators and their options, every subgraph. `TFLiteError` for a
  file that is not one or is damaged; its subclass `Unsupported` for one that uses an operator,
  tensor type or option this interpreter does not run (quantized models, for instance): the
  caller can fall back to `ai_edge_litert`.
- `Graph(model)`: `run(inputs)` runs the main subgraph (`IF` runs the others) with each operator's
  constants prepared once; shapes follow the actual inputs, so a resizable input (the
  melspectrogram model's) needs no resize step. A convolution whose filters are a windowed DFT's
  (the melspectrogram's) runs as an FFT.
- `RowStream.of(graph, stride)`: the same graph as a stream along axis 1 for a chain of
  row-local operators (`step(x, shift)` recomputes only the rows that the `shift` new rows at
  the end of `x` reach); `None` when the graph is not such a chain.

Results agree with the TFLite interpreter to float32 rounding (`tests/test_tflite.py` runs every
model in `models/`, and each operator on small models, through both).
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

Array = npt.NDArray[Any]


class TFLiteError(Exception):
    """The file is not a TFLite model, or is a damaged one; the message says what and where."""


class Unsupported(TFLiteError):
    """A TFLite model, but one that uses an operator, tensor type or option this interpreter
    does not run: the TFLite interpreter can."""


# -- the FlatBuffer ------------------------------------------------------------------------------


class _Table:
    """One FlatBuffer table: fields by their index in the schema (absent fields read as None)."""

    __slots__ = ("_buf", "_pos", "_vsize", "_vtable")

    def __init__(self, buf: bytes, pos: int) -> None:
        self._buf = buf
        self._pos = pos
        self._vtable = pos - struct.unpack_from("<i", buf, pos)[0]
        self._vsize = struct.unpack_from("<H", buf, self._vtable)[0]

    def _field(self, index: int) -> int | None:
        slot = 4 + 2 * index
        if slot >= self._vsize:
            return None
        offset = struct.unpack_from("<H", self._buf, self._vtable + slot)[0]
        return self._pos + offset if offset else None

    def scalar(self, index: int, fmt: str, default: Any = 0) -> Any:
        at = self._field(index)
        return default if at is None else struct.unpack_from("<" + fmt, self._buf, at)[0]

    def _target(self, index: int) -> int | None:
        at = self._field(index)
        return None if at is None else at + struct.unpack_from("<I", self._buf, at)[0]

    def table(self, index: int) -> _Table | None:
        at = self._target(index)
        return None if at is None else _Table(self._buf, at)

    def tables(self, index: int) -> list[_Table]:
        at = self._target(index)
        if at is None:
            return []
        n = struct.unpack_from("<I", self._buf, at)[0]
        if at + 4 + 4 * n > len(self._buf):
            raise ValueError(f"a vector of {n} tables runs past the end of the file")
        slots = (at + 4 + 4 * i for i in range(n))
        return [_Table(self._buf, s + struct.unpack_from("<I", self._buf, s)[0]) for s in slots]

    def vector(self, index: int, dtype: str) -> Array | None:
        at = self._target(index)
        if at is None:
            return None
        n = struct.unpack_from("<I", self._buf, at)[0]
        return np.frombuffer(self._buf, dtype=np.dtype(dtype), count=n, offset=at + 4)

    def string(self, index: int) -> str | None:
        raw = self.vector(index, "u1")
        return None if raw is None else bytes(raw).decode("utf-8", "replace")


# BuiltinOperator codes (schema.fbs) of the operators this interpreter runs.
_OPERATORS = {
    0: "ADD",
    3: "CONV_2D",
    9: "FULLY_CONNECTED",
    14: "LOGISTIC",
    17: "MAX_POOL_2D",
    18: "MUL",
    19: "RELU",
    21: "RELU6",
    22: "RESHAPE",
    25: "SOFTMAX",
    28: "TANH",
    34: "PAD",
    39: "TRANSPOSE",
    40: "MEAN",
    41: "SUB",
    42: "DIV",
    43: "SQUEEZE",
    47: "EXP",
    55: "MAXIMUM",
    57: "MINIMUM",
    61: "GREATER",
    62: "GREATER_EQUAL",
    70: "EXPAND_DIMS",
    73: "LOG",
    74: "SUM",
    75: "SQRT",
    76: "RSQRT",
    82: "REDUCE_MAX",
    92: "SQUARE",
    98: "LEAKY_RELU",
    99: "SQUARED_DIFFERENCE",
    118: "IF",
    126: "BATCH_MATMUL",
}
# TensorType codes -> NumPy dtypes (the float and index types float graphs use).
_TYPES = {0: np.float32, 2: np.int32, 4: np.int64, 6: np.bool_, 10: np.float64}
# Fused activations as TFLite's float kernels apply them (they clamp; TANH and SIGN_BIT are not
# applied by every kernel, so a model with them goes to the TFLite interpreter).
_ACTIVATIONS: dict[int, Callable[[Array], Array] | None] = {
    0: None,
    1: lambda x: np.maximum(x, np.float32(0)),
    2: lambda x: np.clip(x, np.float32(-1), np.float32(1)),
    3: lambda x: np.clip(x, np.float32(0), np.float32(6)),
}
_MAX_IF_DEPTH = 8
"""IF branches nested deeper than this are refused (the wake-word models have one level)."""


@dataclass
class Tensor:
    name: str
    shape: tuple[int, ...]
    dtype: Any
    data: Array | None
    """The constant's value, None for a tensor computed at run time."""


@dataclass
class Operator:
    name: str
    inputs: list[int]
    """Tensor indices; -1 for an optional input left out."""
    outputs: list[int]
    options: _Table | None


@dataclass
class Subgraph:
    tensors: list[Tensor]
    inputs: list[int]
    outputs: list[int]
    operators: list[Operator]


@dataclass
class Model:
    """A `.tflite` file read into tensors, operators and subgraphs (the main one first)."""

    path: Path
    subgraphs: list[Subgraph] = field(default_factory=list)

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            buf = path.read_bytes()
        except OSError as exc:
            raise TFLiteError(f"{path}: cannot read it ({exc.strerror})") from exc
        if len(buf) < 8 or buf[4:8] != b"TFL3":
            raise TFLiteError(f"{path}: not a TensorFlow Lite model (no TFL3 identifier)")
        try:
            self.subgraphs = self._read(buf)
        except (struct.error, IndexError, ValueError, OverflowError, MemoryError) as exc:
            raise TFLiteError(f"{path}: a damaged TensorFlow Lite file ({exc})") from exc

    def _read(self, buf: bytes) -> list[Subgraph]:
        root = _Table(buf, struct.unpack_from("<I", buf, 0)[0])
        codes = []
        for code in root.tables(1):  # operator_codes
            # builtin_code (int32) superseded deprecated_builtin_code (int8) at 127 operators
            number = max(code.scalar(0, "b"), code.scalar(3, "i"))
            codes.append(_OPERATORS.get(number, f"builtin operator {number}"))
        buffers = []
        for buffer in root.tables(4):
            data = buffer.vector(0, "u1")
            offset, size = buffer.scalar(1, "Q"), buffer.scalar(2, "Q")
            if offset > 1:  # large models keep their data after the FlatBuffer
                data = np.frombuffer(buf, np.uint8, count=size, offset=offset)
            buffers.append(data)
        return [self._subgraph(sg, codes, buffers) for sg in root.tables(2)]

    def _subgraph(self, sg: _Table, codes: list[str], buffers: list[Array | None]) -> Subgraph:
        tensors = []
        for t in sg.tables(0):
            name = t.string(3) or ""
            type_code = t.scalar(1, "b")
            if type_code not in _TYPES:
                raise Unsupported(
                    f"{self.path}: tensor '{name}' has TFLite type {type_code}, which this "
                    "interpreter does not run (float models only)"
                )
            quant = t.table(4)
            if quant is not None and quant.vector(2, "f4") is not None:  # scale
                raise Unsupported(f"{self.path}: tensor '{name}' is quantized (float models only)")
            dtype = _TYPES[type_code]
            shape_vec = t.vector(0, "i4")
            shape = tuple(int(n) for n in shape_vec) if shape_vec is not None else ()
            raw = buffers[t.scalar(2, "I")]
            data: Array | None = None
            if raw is not None and len(raw):
                # A read-only view of the file's bytes where aligned (TFLite aligns them): the
                # weights are held once, as the file is.
                aligned = raw.ctypes.data % np.dtype(dtype).itemsize == 0
                data = np.frombuffer(raw if aligned else raw.copy(), dtype=dtype).reshape(shape)
            elif shape and 0 in shape:  # an empty constant (a RESHAPE to a scalar has one)
                data = np.zeros(shape, dtype)
            tensors.append(Tensor(name, shape, dtype, data))
        operators = []
        for op in sg.tables(3):
            ins, outs = op.vector(1, "i4"), op.vector(2, "i4")
            operators.append(
                Operator(
                    name=codes[op.scalar(0, "I")],
                    inputs=[int(i) for i in ins] if ins is not None else [],
                    outputs=[int(i) for i in outs] if outs is not None else [],
                    options=op.table(4),
                )
            )
        ins, outs = sg.vector(1, "i4"), sg.vector(2, "i4")
        return Subgraph(
            tensors,
            [int(i) for i in ins] if ins is not None else [],
            [int(i) for i in outs] if outs is not None else [],
            operators,
        )


# -- running it ----------------------------------------------------------------------------------

Kernel = Callable[[list[Array]], list[Array]]
"""One prepared operator: its run-time inputs (constants are bound) in, its outputs out."""


@dataclass
class _Step:
    op: Operator
    kernel: Kernel
    runtime: list[int]
    """The tensors read at run time (not constants), in the kernel's argument order."""
    rows: tuple[int, int] | None
    """How the operator maps rows of its input (axis 1) to rows of its output, for streaming:
    (window, stride) for a valid convolution or pooling along rows, (1, 1) for an operator that
    treats each row on its own; None when an output row depends on the whole input."""


class Graph:
    """A model's main subgraph, its operators prepared to run on NumPy arrays."""

    def __init__(
        self,
        model: Model,
        index: int = 0,
        within: tuple[int, ...] = (),
        branches: dict[int, Graph] | None = None,
    ) -> None:
        self.model = model
        self.subgraph = model.subgraphs[index]
        self._within = (*within, index)
        """This subgraph and those whose IF led here: a branch leading back is refused."""
        self._spectrum: tuple[Array, Array, int, Array] | None = None
        """The last FFT a DFT convolution made (input, window, stride, spectrum), for its twin."""
        self._branches: dict[int, Graph] = {} if branches is None else branches
        """The model's IF branches, each prepared once however many IFs name it."""
        try:
            self.steps = [self._prepare(op) for op in self.subgraph.operators]
        except (
            IndexError,
            KeyError,
            ValueError,
            TypeError,
            AttributeError,
            OverflowError,
            ZeroDivisionError,
            MemoryError,
            struct.error,
        ) as exc:
            # operators pointing at tensors that are not there, constants of the wrong shape
            raise TFLiteError(f"{model.path}: a damaged TensorFlow Lite file ({exc})") from exc

    @property
    def input_shape(self) -> tuple[int, ...]:
        return self.subgraph.tensors[self.subgraph.inputs[0]].shape

    @property
    def output_shape(self) -> tuple[int, ...]:
        return self.subgraph.tensors[self.subgraph.outputs[0]].shape

    def run(self, inputs: Sequence[Array]) -> list[Array]:
        """The subgraph's outputs for `inputs` (one array per subgraph input). As in TFLite, an
        overflow or a division by zero gives inf or NaN, without a warning."""
        values: dict[int, Array] = dict(zip(self.subgraph.inputs, inputs, strict=True))
        with np.errstate(all="ignore"):
            for step in self.steps:
                outs = step.kernel([values[i] for i in step.runtime])
                values.update(zip(step.op.outputs, outs, strict=True))
        return [values[i] for i in self.subgraph.outputs]

    def _const(self, index: int) -> Array | None:
        return None if index < 0 else self.subgraph.tensors[index].data

    def _prepare(self, op: Operator) -> _Step:
        tensors = self.subgraph.tensors
        runtime = [i for i in op.inputs if i >= 0 and tensors[i].data is None]
        consts = [self._const(i) for i in op.inputs]
        where = f"{self.model.path}: operator {op.name}"
        make = getattr(self, "_op_" + op.name.lower().replace(" ", "_"), None)
        if make is None:
            raise Unsupported(f"{where} is not one this interpreter runs")
        kernel, rows = make(op, consts, where)
        return _Step(op, kernel, runtime, rows)

    # Each _op_X returns (kernel, rows). `consts[i]` is input i's value when it is a constant.

    @staticmethod
    def _options(op: Operator) -> _Table:
        if op.options is None:
            raise TFLiteError(f"operator {op.name} has no options")
        return op.options

    def _binary(
        self, op: Operator, consts: list[Array | None], fn: Callable[[Array, Array], Array]
    ) -> Any:
        a, b = consts[0], consts[1]
        if a is None and b is None:
            return (lambda xs: [fn(xs[0], xs[1])]), None
        rank = len(self.subgraph.tensors[op.inputs[0 if a is None else 1]].shape)
        if b is not None:
            return (lambda xs: [fn(xs[0], b)]), _rowwise_constant(b, rank)
        assert a is not None
        return (lambda xs: [fn(a, xs[0])]), _rowwise_constant(a, rank)

    def _fused(self, op: Operator, index: int, where: str) -> Callable[[Array], Array] | None:
        code = op.options.scalar(index, "b") if op.options is not None else 0
        if code not in _ACTIVATIONS:
            raise Unsupported(f"{where}: fused activation {code} is not supported")
        return _ACTIVATIONS[code]

    def _arith(self, op: Operator, consts: list[Array | None], where: str, fn: Any) -> Any:
        act = self._fused(op, 0, where)
        kernel, rows = self._binary(op, consts, fn)
        if act is None:
            return kernel, rows
        return (lambda xs: [np.asarray(act(kernel(xs)[0]))]), rows

    def _op_add(self, op: Operator, consts: list[Array | None], where: str) -> Any:
        return self._arith(op, consts, where, np.add)

    def _op_sub(self, op: Operator, consts: list[Array | None], where: str) -> Any:
        return self._arith(op, consts, where, np.subtract)

    def _op_mul(self, op: Operator, consts: list[Array | None], where: str) -> Any:
        return self._arith(op, consts, where, np.multiply)

    def _op_div(self, op: Operator, consts: list[Array | None], where: str) -> Any:
        return self._arith(op, consts, where, np.divide)

    def _op_maximum(self, op: Operator, consts: list[Array | None], where: str) -> Any:
        return self._binary(op, consts, np.maximum)

    def _op_minimum(self, op: Operator, consts: list[Array | None], where: str) -> Any:
        return self._binary(op, consts, np.minimum)

    def _op_greater(self, op: Operator, consts: list[Array | None], where: str) -> Any:
        return self._binary(op, consts, np.greater)

    def _op_greater_equal(self, op: Operator, consts: list[Array | None], where: str) -> Any:
        return self._binary(op, consts, np.greater_equal)

    def _op_squared_difference(self, op: Operator, consts: list[Array | None], where: str) -> Any:
        return self._binary(op, consts, lambda a, b: np.square(a - b))

    def _unary(self, fn: Callable[[Array], Array]) -> Any:
        return (lambda xs: [fn(xs[0])]), (1, 1)

    def _op_logistic(self, op: Operator, consts: list[Array | None], where: str) -> Any:
        # 1 / (1 + exp(-x)) overflows (and warns) below x = -88: the same through tanh
        half = np.float32(0.5)
        return self._unary(lambda x: half + half * np.tanh(half * x))

    def _op_relu(self, op: Operator, consts: list[Array | None], where: str) -> Any:
        return self._unary(lambda x: np.maximum(x, np.float32(0)))

    def _op_relu6(self, op: Operator, consts: list[Array | None], where: str) -> Any:
        return self._unary(lambda x: np.clip(x, np.float32(0), np.float32(6)))

    def _op_tanh(self, op: Operator, consts: list[Array | None], where: str) -> Any:
        return self._unary(np.tanh)

    def _op_exp(self, op: Operator, consts: list[Array | None], where: str) -> Any:
        return self._unary(np.exp)

    def _op_log(self, op: Operator, consts: list[Array | None], where: str) -> Any:
        return self._unary(np.log)

    def _op_sqrt(self, op: Operator, consts: list[Array | None], where: str) -> Any:
        return self._unary(np.sqrt)

    def _op_rsqrt(self, op: Operator, consts: list[Array | None], where: str) -> Any:
        one = np.float32(1)
        return self._unary(lambda x: one / np.sqrt(x))

    def _op_square(self, op: Operator, consts: list[Array | None], where: str) -> Any:
        return self._unary(np.square)

    def _op_leaky_relu(self, op: Operator, consts: list[Array | None], where: str) -> Any:
        alpha = np.float32(self._options(op).scalar(0, "f"))
        if 0 <= alpha <= 1:  # the same, in two passes without a mask
            return self._unary(lambda x: np.maximum(x, x * alpha))
        return self._unary(lambda x: np.where(x >= 0, x, x * alpha))

    def _op_softmax(self, op: Operator, consts: list[Array | None], where: str) -> Any:
        beta = np.float32(self._options(op).scalar(0, "f", 0.0))  # the schema's default

        def softmax(x: Array) -> Array:
            e = np.exp((x - x.max(axis=-1, keepdims=True)) * beta)
            out: Array = e / e.sum(axis=-1, keepdims=True)
            return out

        return (lambda xs: [softmax(xs[0])]), None

    def _op_reshape(self, op: Operator, consts: list[Array | None], where: str) -> Any:
        out = self.subgraph.tensors[op.outputs[0]]
        shape = consts[1] if len(consts) > 1 else None
        if shape is None and op.options is not None:
            shape = op.options.vector(0, "i4")
        target = tuple(int(n) for n in shape) if shape is not None else out.shape
        return (lambda xs: [xs[0].reshape(target)]), None

    def _op_squeeze(self, op: Operator, consts: list[Array | None], where: str) -> Any:
        dims = op.options.vector(0, "i4") if op.options is not None else None
        axes = tuple(int(d) for d in dims) if dims is not None and len(dims) else None
        return (lambda xs: [xs[0].squeeze(axes)]), None

    def _op_expand_dims(self, op: Operator, consts: list[Array | None], where: str) -> Any:
        axis = consts[1]
        if axis is None:
            raise Unsupported(f"{where}: a run-time axis is not supported")
        a = int(axis.reshape(-1)[0])
        # an index that adds the axis (a view; IndexError past the rank), counted from the
        # end for a negative axis as TFLite does: np.expand_dims's checks cost 10 times more
        at = (slice(None),) * a + (None,) if a >= 0 else (..., None) + (slice(None),) * (-a - 1)
        return (lambda xs: [xs[0][at]]), None

    def _op_transpose(self, op: Operator, consts: list[Array | None], where: str) -> Any:
        perm = consts[1]
        if perm is None:
            raise Unsupported(f"{where}: a run-time permutation is not supported")
        p = tuple(int(n) for n in perm)
        return (lambda xs: [xs[0].transpose(p)]), None  # a view: readers copy if they must

    def _reduce(
        self, op: Operator, consts: list[Array | None], where: str, fn: np.ufunc, mean: bool = False
    ) -> Any:
        axis = consts[1]
        if axis is None:
            raise Unsupported(f"{where}: run-time axes are not supported")
        axes = tuple(sorted({int(n) for n in axis.reshape(-1)}))  # TFLite allows repeats
        keep = bool(op.options.scalar(0, "b")) if op.options is not None else False
        # the ufuncs' own reductions: np.mean and np.max add microseconds of checks in Python
        if not mean:
            return (lambda xs: [np.asarray(fn.reduce(xs[0], axes, keepdims=keep))]), None

        def average(xs: list[Array]) -> list[Array]:
            x = xs[0]
            count = 1
            for a in axes:
                count *= x.shape[a]
            # as np.mean does it: the float32 sum, divided by the count
            return [np.asarray(fn.reduce(x, axes, keepdims=keep) / x.dtype.type(count))]

        return average, None

    def _op_mean(self, op: Operator, consts: list[Array | None], where: str) -> Any:
        return self._reduce(op, consts, where, np.add, mean=True)

    def _op_sum(self, op: Operator, consts: list[Array | None], where: str) -> Any:
        return self._reduce(op, consts, where, np.add)

    def _op_reduce_max(self, op: Operator, consts: list[Array | None], where: str) -> Any:
        return self._reduce(op, consts, where, np.maximum)

    def _op_pad(self, op: Operator, consts: list[Array | None], where: str) -> Any:
        pads = consts[1]
        if pads is None:
            raise Unsupported(f"{where}: run-time paddings are not supported")
        widths = [(int(a), int(b)) for a, b in pads.reshape(-1, 2)]
        if any(a < 0 or b < 0 for a, b in widths):
            raise TFLiteError(f"{where}: negative paddings")
        rows = (1, 1) if len(widths) > 1 and widths[1] == (0, 0) else None

        def pad(xs: list[Array]) -> list[Array]:
            # zeros and one copy: np.pad costs ten times that on these small arrays
            x = xs[0]
            out = np.zeros([n + a + b for n, (a, b) in zip(x.shape, widths, strict=True)], x.dtype)
            out[tuple(slice(a, a + n) for n, (a, _) in zip(x.shape, widths, strict=True))] = x
            return [out]

        return pad, rows

    def _op_fully_connected(self, op: Operator, consts: list[Array | None], where: str) -> Any:
        act = self._fused(op, 0, where)
        keep = bool(op.options.scalar(2, "b")) if op.options is not None else False
        has_bias = len(op.inputs) > 2 and op.inputs[2] >= 0
        # Weights are constants in a main graph; a branch of IF gets them as its inputs.
        weights = None if consts[1] is None else consts[1].T
        bias = consts[2] if has_bias else None

        def fully_connected(xs: list[Array]) -> list[Array]:
            rest = iter(xs[1:])
            w = weights if weights is not None else next(rest).T
            b = (bias if bias is not None else next(rest)) if has_bias else None
            x = xs[0]
            y = x.reshape(-1, w.shape[0]) @ w
            if b is not None:
                y += b
            if act is not None:
                y = act(y)
            return [y.reshape(*x.shape[:-1], w.shape[1]) if keep else y]

        return fully_connected, None

    def _op_batch_matmul(self, op: Operator, consts: list[Array | None], where: str) -> Any:
        adj_x = bool(op.options.scalar(0, "b")) if op.options is not None else False
        adj_y = bool(op.options.scalar(1, "b")) if op.options is not None else False

        def prep(m: Array, adj: bool) -> Array:
            return np.swapaxes(m, -1, -2) if adj else m

        a, b = consts[0], consts[1]
        if b is not None and a is None:
            bb = prep(b, adj_y)
            return (lambda xs: [prep(xs[0], adj_x) @ bb]), None
        if a is None and b is None:
            return (lambda xs: [prep(xs[0], adj_x) @ prep(xs[1], adj_y)]), None
        raise Unsupported(f"{where}: a constant left operand is not supported")

    def _window(self, op: Operator) -> tuple[str, int, int]:
        """(padding, row stride, column stride) of a convolution or pooling."""
        opts = self._options(op)
        padding = "SAME" if opts.scalar(0, "b") == 0 else "VALID"
        stride_w, stride_h = opts.scalar(1, "i"), opts.scalar(2, "i")
        if stride_w < 1 or stride_h < 1:
            raise TFLiteError(
                f"{self.model.path}: operator {op.name}: strides {stride_h} x {stride_w}"
            )
        return padding, stride_h, stride_w

    def _op_conv_2d(self, op: Operator, consts: list[Array | None], where: str) -> Any:
        weights, bias = consts[1], consts[2] if len(consts) > 2 else None
        if weights is None:
            raise Unsupported(f"{where}: run-time filters are not supported")
        opts = self._options(op)
        padding, stride_h, stride_w = self._window(op)
        act = self._fused(op, 3, where)
        dil_w, dil_h = opts.scalar(4, "i", 1), opts.scalar(5, "i", 1)
        channels = self.subgraph.tensors[op.inputs[0]].shape[-1:]
        if channels and channels[0] not in (weights.shape[-1], -1):
            raise Unsupported(f"{where}: a grouped convolution")
        if dil_w < 1 or dil_h < 1 or min(weights.shape) < 1:
            raise TFLiteError(f"{where}: dilation {dil_h} x {dil_w}, filter {weights.shape}")
        out_c, kh, kw, _ = weights.shape
        # one matrix product over every window (im2col): (taps x channels) x out channels; a
        # transposed view, which BLAS reads as is (no second copy of the weights)
        matrix = weights.reshape(out_c, -1).T

        dft = None
        if padding == "VALID" and (kh, dil_w, weights.shape[3]) == (1, 1, 1) and act is None:
            dft = _as_dft(weights[:, 0, :, 0], bias)
        if dft is not None:
            return self._dft(dft, kw, stride_w), _row_window(padding, kh, stride_h, dil_h)

        def conv(xs: list[Array]) -> list[Array]:
            patches = _patches(xs[0], (kh, kw), (stride_h, stride_w), (dil_h, dil_w), padding)
            n, ho, wo = patches.shape[:3]
            rows = patches.reshape(n * ho * wo, -1)
            # BLAS is faster with the file's weights (out x taps) on the left when the rows are
            # fewer than the taps (the melspectrogram's 8 frames of 512 samples: twice as fast)
            y = (matrix.T @ rows.T).T if len(rows) < len(matrix) else rows @ matrix
            if bias is not None:
                y += bias
            if act is not None:
                y = act(y)
            return [y.reshape(n, ho, wo, out_c)]

        return conv, _row_window(padding, kh, stride_h, dil_h)

    def _dft(self, dft: tuple[Array, bool], size: int, stride: int) -> Kernel:
        """A convolution whose filters are a windowed DFT's (the melspectrogram model's two):
        the same numbers by FFT, without reading the 0.5 MB of filters every 80 ms."""
        window, sine = dft

        def transform(xs: list[Array]) -> list[Array]:
            x = xs[0]  # N x H x W x 1
            n, h, w = x.shape[:3]
            wo = (w - size) // stride + 1
            if wo < 1:
                raise ValueError(f"input {x.shape} is shorter than the window {size}")
            last = self._spectrum
            if last is not None and last[0] is x and last[1] is window and last[2] == stride:
                spectrum = last[3]  # the real part's convolution reads the same frames
            else:
                rows = np.ascontiguousarray(x[..., 0]).reshape(n * h, w)
                step = rows.itemsize
                # the frames as a view of the rows (sliding_window_view's checks cost more)
                frames = np.ndarray(
                    (n * h, wo, size), rows.dtype, rows, 0, (w * step, stride * step, step)
                )
                spectrum = np.fft.rfft(frames * window, axis=-1)
                self._spectrum = (x, window, stride, spectrum)
            # rfft gives sum(x cos) - i sum(x sin): a sine filter's sum is minus the imaginary part
            y = (-spectrum.imag if sine else spectrum.real).astype(np.float32)
            return [y.reshape(n, h, wo, -1)]

        return transform

    def _op_max_pool_2d(self, op: Operator, consts: list[Array | None], where: str) -> Any:
        opts = self._options(op)
        padding, stride_h, stride_w = self._window(op)
        fw, fh = opts.scalar(3, "i"), opts.scalar(4, "i")
        if fw < 1 or fh < 1:
            raise TFLiteError(f"{where}: a {fh} x {fw} window")
        act = self._fused(op, 5, where)

        def pool(xs: list[Array]) -> list[Array]:
            x = _pad_same(xs[0], padding, (fh, fw), (stride_h, stride_w), (1, 1), -np.inf)
            ho = (x.shape[1] - fh) // stride_h + 1
            wo = (x.shape[2] - fw) // stride_w + 1
            if ho < 1 or wo < 1:
                raise ValueError(f"input {xs[0].shape} is smaller than the window {fh} x {fw}")
            # the maximum over the window's taps, each a strided slice (no copy of windows)
            taps = [
                x[
                    :,
                    i : i + (ho - 1) * stride_h + 1 : stride_h,
                    j : j + (wo - 1) * stride_w + 1 : stride_w,
                ]
                for i in range(fh)
                for j in range(fw)
            ]
            y = taps[0].copy()
            for tap in taps[1:]:
                np.maximum(y, tap, out=y)
            if act is not None:
                y = act(y)
            return [y]

        return pool, _row_window(padding, fh, stride_h, 1)

    def _op_if(self, op: Operator, consts: list[Array | None], where: str) -> Any:
        opts = self._options(op)
        branches = {True: opts.scalar(0, "i"), False: opts.scalar(1, "i")}
        for index in branches.values():
            if not 0 <= index < len(self.model.subgraphs) or index in self._within:
                raise TFLiteError(f"{where}: branch subgraph {index} does not exist or loops")
        if len(self._within) > _MAX_IF_DEPTH:
            raise Unsupported(f"{where}: branches nested deeper than {_MAX_IF_DEPTH}")
        for index in branches.values():
            if index not in self._branches:
                self._branches[index] = Graph(self.model, index, self._within, self._branches)
        graphs = {k: self._branches[i] for k, i in branches.items()}

        def branch(xs: list[Array]) -> list[Array]:
            return graphs[bool(np.asarray(xs[0]).reshape(-1)[0])].run(xs[1:])

        # The branches read the operator's inputs after the condition, constants included.
        tensors = self.subgraph.tensors

        def with_consts(xs: list[Array]) -> list[Array]:
            it = iter(xs)
            values: list[Array] = []
            for i in op.inputs:
                data = tensors[i].data
                values.append(data if data is not None else next(it))
            return branch(values)

        return with_consts, None


def _rowwise_constant(constant: Array, rank: int) -> tuple[int, int] | None:
    """(1, 1) when an elementwise operator with this constant operand treats each row (axis 1
    of its `rank`-dimensional run-time operand) on its own: the constant does not vary along
    that axis (NumPy's broadcasting aligns the last axes)."""
    along_rows = constant.ndim - rank + 1
    if rank < 2 or constant.ndim > rank:  # (a wider constant would move the rows)
        return None
    return (1, 1) if along_rows < 0 or constant.shape[along_rows] == 1 else None


def _as_dft(filters: Array, bias: Array | None) -> tuple[Array, bool] | None:
    """(window, sine?) when `filters` (out x taps, taps even, out = taps/2 + 1) are a windowed
    discrete Fourier transform's: filter k, tap t is window[t] * cos(2 pi k t / taps), or
    window[t] * sin(...) (the sign is the window's). Else None. Row by row, without a matrix
    of the filters' size (at start-up on a small board)."""
    out, taps = filters.shape
    if taps % 2 or out != taps // 2 + 1 or filters.dtype != np.float32:
        return None
    if bias is not None and np.any(bias):
        return None
    with np.errstate(all="ignore"):  # (a damaged file's weights may be signalling NaNs)
        if not np.all(np.isfinite(filters)):
            return None
    scale = float(np.max(np.abs(filters)))
    if scale == 0:
        return None
    t = np.arange(taps)
    for sine in (False, True):
        wave = np.sin if sine else np.cos
        # each tap's window value by least squares over the filters (a sine's taps 0 and
        # taps/2 are 0 in every filter: their value does not matter)
        num, den = np.zeros(taps), np.zeros(taps)
        for k in range(out):
            basis = wave(2 * np.pi * k * t / taps)
            num += filters[k] * basis
            den += basis * basis
        window = np.divide(num, den, out=np.zeros(taps), where=den > 1e-9)
        if all(
            np.max(np.abs(filters[k] - window * wave(2 * np.pi * k * t / taps))) <= 1e-6 * scale
            for k in range(out)
        ):
            return window.astype(np.float32), sine
    return None


def _row_window(padding: str, height: int, stride: int, dilation: int) -> tuple[int, int] | None:
    """(window, stride) along rows of a convolution or pooling, when no padding is added along
    rows (VALID, or SAME with a one-row window): each output row then reads `window` input rows
    from `stride` x its index. None otherwise."""
    if dilation != 1 or (padding != "VALID" and (height, stride) != (1, 1)):
        return None
    return height, stride


def _pad_same(
    x: Array,
    padding: str,
    kernel: tuple[int, int],
    stride: tuple[int, int],
    dilation: tuple[int, int],
    value: float,
) -> Array:
    """`x` (NHWC) padded as TFLite's SAME padding does (the extra row or column at the end)."""
    if padding == "VALID":
        return x
    (_, top, bottom), (_, left, right) = (
        _same(size, k, s, d)
        for size, k, s, d in zip(x.shape[1:3], kernel, stride, dilation, strict=True)
    )
    if top == bottom == left == right == 0:
        return x  # (the embedding model's poolings: nothing to add)
    n, h, w, c = x.shape
    out = np.full((n, top + h + bottom, left + w + right, c), value, x.dtype)
    out[:, top : top + h, left : left + w] = x  # np.pad costs ten times that here
    return out


def _same(size: int, kernel: int, stride: int, dilation: int) -> tuple[int, int, int]:
    """(output size, padding before, padding after) of TFLite's SAME padding along one axis
    (the odd one goes after)."""
    out = -(-size // stride)
    total = max((out - 1) * stride + (kernel - 1) * dilation + 1 - size, 0)
    return out, total // 2, total - total // 2


def _windows(
    x: Array, kernel: tuple[int, int], stride: tuple[int, int], dilation: tuple[int, int]
) -> Array:
    """Every (kernel) window of `x` (NHWC): N x out H x out W x kh x kw x C, a view."""
    (kh, kw), (sh, sw), (dh, dw) = kernel, stride, dilation
    span_h, span_w = (kh - 1) * dh + 1, (kw - 1) * dw + 1
    if x.shape[1] < span_h or x.shape[2] < span_w:
        raise ValueError(f"input {x.shape} is smaller than the window {kernel}")
    view = np.lib.stride_tricks.sliding_window_view(x, (span_h, span_w), axis=(1, 2))
    view = view[:, ::sh, ::sw, :, ::dh, ::dw]  # N, Ho, Wo, C, kh, kw
    return np.moveaxis(view, 3, 5)


def _patches(
    x: Array,
    kernel: tuple[int, int],
    stride: tuple[int, int],
    dilation: tuple[int, int],
    padding: str,
) -> Array:
    """Each output position's window of `x` (NHWC), flattened in the filter's order (row, column,
    channel), zeros where SAME padding reaches past the edge: N x out H x out W x (kh * kw * C)."""
    (kh, kw), (sh, sw), (dh, dw) = kernel, stride, dilation
    n, h, w, c = x.shape
    if padding == "SAME":
        (ho, top, _), (wo, left, _) = _same(h, kh, sh, dh), _same(w, kw, sw, dw)
    else:
        ho, wo = (h - (kh - 1) * dh - 1) // sh + 1, (w - (kw - 1) * dw - 1) // sw + 1
        top = left = 0
    if ho < 1 or wo < 1:
        raise ValueError(f"input {x.shape} is smaller than the window {kernel}")
    if padding != "SAME" and kh * kw > 9:
        # the melspectrogram's 512-sample frames: one strided view, one copy
        windows = _windows(x, kernel, stride, dilation)
        return windows.reshape(n, ho, wo, -1)
    # a few taps (the embedding model's 3x1 and 1x3): each tap one slice copied into place,
    # which also pads (np.pad costs more than the whole product here)
    out = (np.zeros if padding == "SAME" else np.empty)((n, ho, wo, kh * kw * c), x.dtype)
    for i in range(kh):
        r0, r1 = _span(ho, sh, i * dh - top, h)
        for j in range(kw):
            c0, c1 = _span(wo, sw, j * dw - left, w)
            if r1 <= r0 or c1 <= c0:
                continue
            at = (i * kw + j) * c
            row, col = r0 * sh + i * dh - top, c0 * sw + j * dw - left
            out[:, r0:r1, c0:c1, at : at + c] = x[
                :, row : row + (r1 - r0 - 1) * sh + 1 : sh, col : col + (c1 - c0 - 1) * sw + 1 : sw
            ]
    return out


def _span(size: int, stride: int, offset: int, limit: int) -> tuple[int, int]:
    """The output indices o (from 0 to `size`) whose input index o * stride + offset lies in
    [0, limit): a range, since the stride is positive."""
    lo = -(offset // stride) if offset < 0 else 0  # ceil(-offset / stride)
    hi = min(size, (limit - 1 - offset) // stride + 1) if limit - 1 - offset >= 0 else 0
    return lo, max(hi, lo)


class RowStream:
    """A graph run as a stream along axis 1 (rows): each `step` gets the previous input moved
    `shift` rows up with `shift` new rows at the end, and recomputes only the output rows that
    depend on them. Between steps it keeps, of each operator's output, only the last rows that
    the next operator will read again (a convolution 3 rows high reads 2 old rows beside the
    new ones); the other operators pass their new rows on."""

    def __init__(self, graph: Graph, stride: int) -> None:
        self.graph = graph
        self.stride = stride
        """The `shift` a step streams; any other shift recomputes everything."""
        # Each operator that reads neighbouring rows, with the row-wise ones after it as one
        # stage: fewer turns of the loop below, which runs every 80 ms.
        self._stages: list[tuple[tuple[int, int], list[Kernel]]] = []
        for step in graph.steps:
            assert step.rows is not None
            if step.rows == (1, 1) and self._stages:
                self._stages[-1][1].append(step.kernel)
            else:
                self._stages.append((step.rows, [step.kernel]))
        n = len(self._stages)
        self._heights = [(0, 0)] * n
        """(input rows, output rows) of each operator, from the last whole computation."""
        self._new = [0] * n
        """Rows each operator's output gains in a streamed step."""
        self._tails: list[Array | None] | None = None
        """The kept last rows of each operator's output (None: nothing kept)."""

    @classmethod
    def of(cls, graph: Graph, stride: int) -> RowStream | None:
        """A stream for `graph` when it is a chain of row-wise operators that a shift of
        `stride` rows keeps aligned (every stride along rows divides the shift there); else None."""
        shift = stride
        previous = graph.subgraph.inputs[0]
        for step in graph.steps:
            if step.rows is None or step.runtime != [previous] or len(step.op.outputs) != 1:
                return None
            row_stride = step.rows[1]
            if shift % row_stride:
                return None
            shift //= row_stride
            previous = step.op.outputs[0]
        if graph.subgraph.outputs != [previous]:
            return None
        return cls(graph, stride)

    def reset(self) -> None:
        """Forget the previous input: the next step computes everything."""
        self._tails = None

    def step(self, x: Array, shift: int) -> Array:
        """The graph's output for `x`, which is the previous `x` moved `shift` rows up."""
        with np.errstate(all="ignore"):
            if self._tails is None or shift != self.stride or shift > x.shape[1]:
                return self._whole(x)
            return self._streamed(x, shift)

    def _whole(self, x: Array) -> Array:
        """Compute everything, and plan what to keep for the streamed steps."""
        stages = self._stages
        outputs = []
        for i, (_, kernels) in enumerate(stages):
            rows_in = x.shape[1]
            for kernel in kernels:
                x = kernel([x])[0]
            outputs.append(x)
            self._heights[i] = (rows_in, x.shape[1])
        rows = self.stride
        keep = [0] * len(stages)
        for i, ((window, row_stride), _) in enumerate(stages):
            rows_in, rows_out = self._heights[i]
            if (window, row_stride) != (1, 1):
                rows = min(rows // row_stride, rows_out)
                # what this operator reads of its input in a streamed step: all of it, or
                # from the first row its first new output row reads
                need = rows_in if rows >= rows_out else rows_in - (rows_out - rows) * row_stride
                if i > 0:  # (the first operator's input is given whole)
                    keep[i - 1] = need
            self._new[i] = rows
        keep[-1] = self._heights[-1][1]
        self._tails = [
            out[:, -k:].copy() if k else None for out, k in zip(outputs, keep, strict=True)
        ]
        return x.copy()

    def _streamed(self, x: Array, shift: int) -> Array:
        assert self._tails is not None
        fresh, source = x[:, -shift:], x
        for i, ((window, row_stride), kernels) in enumerate(self._stages):
            new = self._new[i]
            if (window, row_stride) == (1, 1):
                out = fresh
            elif new >= self._heights[i][1]:
                out = source
            else:
                # the input rows the new output rows read, in `source`, which holds the
                # input's last rows
                rows_in, rows_out = self._heights[i]
                first = (rows_out - new) * row_stride - (rows_in - source.shape[1])
                out = source[:, first : first + (new - 1) * row_stride + window]
            for kernel in kernels:
                out = kernel([out])[0]
            tail = self._tails[i]
            if tail is not None:
                kept = tail.shape[1]
                if new >= kept:
                    tail = out[:, -kept:]
                else:
                    tail[:, :-new] = tail[:, new:]
                    tail[:, -new:] = out
                self._tails[i] = source = tail
            fresh = out
        last = self._tails[-1]
        assert last is not None
        return last.copy()
