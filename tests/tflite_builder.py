"""Small synthetic `.tflite` files for tests, written with the TFLite schema's own generated
classes (shipped in `ai_edge_litert`), and the TFLite interpreter's answer for them."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import flatbuffers
import numpy as np
from ai_edge_litert import schema_py_generated as schema

TYPES = {np.float32: 0, np.int32: 2, np.int64: 4, np.bool_: 6}
CODES = {
    name: getattr(schema.BuiltinOperator, name)
    for name in dir(schema.BuiltinOperator)
    if not name.startswith("_")
}


def options(kind: str, **values: Any) -> tuple[int, Any]:
    """A builtin options table, e.g. options("Conv2DOptions", strideW=1, strideH=1)."""
    table = getattr(schema, kind + "T")()
    for key, value in values.items():
        setattr(table, key, value)
    return getattr(schema.BuiltinOptions, kind), table


@dataclass
class Sub:
    """One subgraph being written: tensors (name, shape, dtype, constant or None), operators."""

    tensors: list[tuple[str, tuple[int, ...], Any, np.ndarray | None]] = field(default_factory=list)
    operators: list[tuple[str, list[int], list[int], tuple[int, Any] | None]] = field(
        default_factory=list
    )
    inputs: list[int] = field(default_factory=list)
    outputs: list[int] = field(default_factory=list)

    def tensor(self, name: str, shape: tuple[int, ...], dtype: Any = np.float32) -> int:
        self.tensors.append((name, tuple(shape), dtype, None))
        return len(self.tensors) - 1

    def const(self, name: str, value: Any, dtype: Any = np.float32) -> int:
        array = np.asarray(value, dtype)
        self.tensors.append((name, array.shape, dtype, array))
        return len(self.tensors) - 1

    def op(
        self, name: str, inputs: list[int], outputs: list[int], opts: tuple[int, Any] | None = None
    ) -> None:
        self.operators.append((name, inputs, outputs, opts))


def write(path: Path, *subgraphs: Sub) -> Path:
    """A model of these subgraphs (the first is the main one) in `path`."""
    model = schema.ModelT()
    model.version = 3
    model.operatorCodes, model.buffers, model.subgraphs = [], [schema.BufferT()], []
    code_index: dict[str, int] = {}
    for sub in subgraphs:
        graph = schema.SubGraphT()
        graph.tensors, graph.operators = [], []
        for name, shape, dtype, data in sub.tensors:
            tensor = schema.TensorT()
            tensor.name, tensor.shape, tensor.type, tensor.buffer = name, list(shape), 0, 0
            tensor.type = TYPES[np.dtype(dtype).type]
            if data is not None:
                buffer = schema.BufferT()
                buffer.data = list(np.ascontiguousarray(data).tobytes()) or None
                model.buffers.append(buffer)
                tensor.buffer = len(model.buffers) - 1
            graph.tensors.append(tensor)
        for name, inputs, outputs, opts in sub.operators:
            if name not in code_index:
                code = schema.OperatorCodeT()
                code.builtinCode = CODES[name]
                code.deprecatedBuiltinCode = min(CODES[name], 127)
                code.version = 1
                code_index[name] = len(model.operatorCodes)
                model.operatorCodes.append(code)
            op = schema.OperatorT()
            op.opcodeIndex, op.inputs, op.outputs = code_index[name], inputs, outputs
            if opts is not None:
                op.builtinOptionsType, op.builtinOptions = opts
            graph.operators.append(op)
        graph.inputs, graph.outputs = sub.inputs, sub.outputs
        model.subgraphs.append(graph)
    builder = flatbuffers.Builder(1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    path.write_bytes(bytes(builder.Output()))
    return path


def single(
    path: Path,
    name: str,
    shapes: list[tuple[int, ...]],
    consts: list[Any],
    out_shape: tuple[int, ...],
    opts: tuple[int, Any] | None = None,
    out_dtype: Any = np.float32,
) -> Path:
    """A model of one operator: float32 inputs of `shapes`, then the constants (None: an
    optional input left out)."""
    sub = Sub()
    ins = [sub.tensor(f"in{i}", shape) for i, shape in enumerate(shapes)]
    sub.inputs = list(ins)
    for j, value in enumerate(consts):
        if value is None:
            ins.append(-1)
        else:
            array = np.asarray(value)
            ins.append(sub.const(f"c{j}", array, array.dtype.type))
    out = sub.tensor("out", out_shape, out_dtype)
    sub.op(name, ins, [out], opts)
    sub.outputs = [out]
    return write(path, sub)


def reference(path: Path, inputs: list[np.ndarray]) -> np.ndarray:
    """The TFLite interpreter's output for `inputs` (its reference kernels, not XNNPACK)."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    interpreter = Interpreter(
        model_path=str(path),
        num_threads=1,
        experimental_op_resolver_type=OpResolverType.BUILTIN_REF,
    )
    details = interpreter.get_input_details()
    for detail, x in zip(details, inputs, strict=True):
        interpreter.resize_tensor_input(detail["index"], list(x.shape))
    interpreter.allocate_tensors()
    for detail, x in zip(details, inputs, strict=True):
        interpreter.set_tensor(detail["index"], x)
    interpreter.invoke()
    out: np.ndarray = interpreter.get_tensor(interpreter.get_output_details()[0]["index"])
    return out
