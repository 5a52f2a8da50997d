"""wakertc's own TFLite interpreter (`wakertc/tflite.py`) against the TFLite interpreter itself
(`ai_edge_litert`, the test set's reference), on every model the bootstrap fetched and on real
speech; damaged files; an operator it does not run falling back to the TFLite interpreter."""

from __future__ import annotations

import logging
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from conftest import MODELS
from speech import synth
from wakertc import tflite
from wakertc.config import WakeConfig, WakeWordConfig
from wakertc.wakeword import WakeWordDetector, WakeWordError, _Network

ALL_MODELS = sorted(MODELS.glob("*.tflite"))
WORD_MODELS = [p for p in ALL_MODELS if p.stem not in ("melspectrogram", "embedding_model")]


def reference(path: Path, shape: list[int] | None = None) -> Any:
    """The TFLite interpreter for `path` (resized to `shape`), ready to invoke."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path), num_threads=1)
    if shape is not None:
        interpreter.resize_tensor_input(0, shape, strict=True)
    interpreter.allocate_tensors()
    return interpreter


def invoke(interpreter: Any, x: np.ndarray) -> np.ndarray:
    interpreter.set_tensor(interpreter.get_input_details()[0]["index"], x)
    interpreter.invoke()
    out: np.ndarray = interpreter.get_tensor(interpreter.get_output_details()[0]["index"])
    return out


def input_for(path: Path, rng: np.random.Generator) -> np.ndarray:
    """A plausible input: audio samples, mel frames or embeddings at their usual scales."""
    if path.stem == "melspectrogram":
        return (rng.standard_normal((1, 1760)) * 3000).astype(np.float32)
    if path.stem == "embedding_model":
        return (rng.random((1, 76, 32, 1)) * 4).astype(np.float32)
    shape = tflite.Graph(tflite.Model(path)).input_shape
    return rng.standard_normal(shape).astype(np.float32)


def test_the_models_are_all_here() -> None:
    names = {p.stem for p in ALL_MODELS}
    assert {"melspectrogram", "embedding_model", "hey_jarvis_v0.1", "alexa_v0.1"} <= names


@pytest.mark.parametrize("path", ALL_MODELS, ids=lambda p: p.stem)
def test_the_file_is_read_as_the_tflite_interpreter_reads_it(path: Path) -> None:
    """Operators in order, every tensor's name and shape, and every constant's value."""
    graph = tflite.Graph(tflite.Model(path))
    # (the melspectrogram model's input must be sized before the interpreter can prepare it)
    interpreter = reference(path, [1, 1760] if path.stem == "melspectrogram" else None)
    ops = [op["op_name"] for op in interpreter._get_ops_details() if op["op_name"] != "DELEGATE"]
    assert [step.op.name for step in graph.steps] == ops[: len(graph.steps)]
    theirs = {t["name"]: t for t in interpreter.get_tensor_details()}
    checked = 0
    for tensor in graph.subgraph.tensors:
        if tensor.name not in theirs:
            continue  # XNNPACK's own tensors replace some of them
        if tensor.data is not None or path.stem != "melspectrogram":  # (sized to 1760 there)
            assert list(tensor.shape) == list(theirs[tensor.name]["shape"]), tensor.name
        if tensor.data is not None and tensor.data.size:
            try:
                value = interpreter.get_tensor(theirs[tensor.name]["index"])
            except ValueError:
                continue  # a constant the delegate took over
            np.testing.assert_array_equal(tensor.data, value, err_msg=tensor.name)
            checked += 1
    assert checked >= 3


@pytest.mark.parametrize("path", ALL_MODELS, ids=lambda p: p.stem)
def test_outputs_match_the_tflite_interpreter(path: Path) -> None:
    rng = np.random.default_rng(7)
    graph = tflite.Graph(tflite.Model(path))
    x = input_for(path, rng)
    interpreter = reference(path, list(x.shape))
    for _ in range(5):
        x = input_for(path, rng)
        ours, theirs = graph.run([x])[0], invoke(interpreter, x)
        assert ours.shape == theirs.shape and ours.dtype == np.float32
        scale = max(float(np.max(np.abs(theirs))), 1.0)
        np.testing.assert_allclose(ours, theirs, rtol=0, atol=2e-6 * scale)


def features_of(text: str, voice: str) -> np.ndarray:
    """The embedding history after each chunk of `text` spoken (via the detector's front end)."""
    detector = WakeWordDetector(WakeConfig(models_dir=MODELS))
    audio = synth(text, voice)
    windows = []
    for start in range(0, len(audio) - 1279, 1280):
        detector.process(audio[start : start + 1280])
        windows.append(detector._front.features[-16:].copy())
    return np.stack(windows)


def test_wake_word_scores_on_speech_match_both_branches() -> None:
    """On a spoken phrase the scores cross the model's own branch (its IF): both branches run,
    and agree with the TFLite interpreter."""
    path = MODELS / "hey_jarvis_v0.1.tflite"
    graph = tflite.Graph(tflite.Model(path))
    interpreter = reference(path)
    windows = features_of("hey jarvis, what time is it", "en-us")
    ours = np.array([graph.run([w[None]])[0][0, 0] for w in windows])
    theirs = np.array([invoke(interpreter, w[None])[0, 0] for w in windows])
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-5)
    assert ours.max() > 0.9 and ours.min() < 0.01, (ours.min(), ours.max())


def test_the_embedding_stream_equals_the_whole_window() -> None:
    """Streamed, 8 mel frames at a time, the embedding is the whole window's; a shift other
    than 8 (the first chunk after a reset is 5 frames) recomputes everything."""
    graph = tflite.Graph(tflite.Model(MODELS / "embedding_model.tflite"))
    stream = tflite.RowStream.of(graph, 8)
    assert stream is not None
    rng = np.random.default_rng(3)
    mel = (rng.random((300, 32)) * 4).astype(np.float32)
    starts = [0, 5, 13, 21, 29, 37, 40, 48, 56, 64, 72, 80, 88, 96, 104, 112, 150, 158, 166]
    previous = 0
    for start in starts:
        x = np.ascontiguousarray(mel[start : start + 76][None, :, :, None])
        streamed = stream.step(x, start - previous)
        whole = graph.run([x])[0]
        # the same sums over fewer rows at a time: float32 rounding apart (values up to ~30)
        atol = 2e-6 * float(np.max(np.abs(whole)))
        np.testing.assert_allclose(streamed, whole, rtol=0, atol=atol, err_msg=f"at {start}")
        previous = start
    stream.reset()
    x = np.ascontiguousarray(mel[8:84][None, :, :, None])
    whole = graph.run([x])[0]
    atol = 2e-6 * float(np.max(np.abs(whole)))
    np.testing.assert_allclose(stream.step(x, 8), whole, rtol=0, atol=atol)


def test_the_embedding_stream_recomputes_only_the_new_rows() -> None:
    """The point of the stream: each operator runs on the rows the new frames reach, far fewer
    than the window's (counted by the rows each kernel is given)."""
    graph = tflite.Graph(tflite.Model(MODELS / "embedding_model.tflite"))
    rows: list[int] = []
    for step in graph.steps:
        kernel = step.kernel

        def counted(xs: list[np.ndarray], kernel: Any = kernel) -> list[np.ndarray]:
            rows.append(xs[0].shape[1])
            return kernel(xs)  # type: ignore[no-any-return]

        step.kernel = counted
    stream = tflite.RowStream.of(graph, 8)
    assert stream is not None
    mel = np.random.default_rng(4).random((84, 32)).astype(np.float32)
    stream.step(mel[None, :76, :, None].copy(), 0)
    whole = sum(rows)
    rows.clear()
    stream.step(mel[None, 8:84, :, None].copy(), 8)
    assert sum(rows) * 4 < whole, (sum(rows), whole)


def test_graphs_that_are_not_a_row_chain_do_not_stream() -> None:
    graph = tflite.Graph(tflite.Model(MODELS / "hey_jarvis_v0.1.tflite"))
    assert tflite.RowStream.of(graph, 8) is None  # it reshapes the window into one row
    embedding = tflite.Graph(tflite.Model(MODELS / "embedding_model.tflite"))
    assert tflite.RowStream.of(embedding, 3) is None  # pooling by 2 could not follow a shift of 3


def test_logistic_of_a_large_negative_input_is_zero_without_a_warning() -> None:
    """TFLite gives 0 there; 1 / (1 + exp(-x)) would overflow, and warnings are errors here."""
    graph = tflite.Graph(tflite.Model(MODELS / "alexa_v0.1.tflite"))
    (step,) = [s for s in graph.steps if s.op.name == "LOGISTIC"]
    out = step.kernel([np.array([[-1000.0, 0.0, 1000.0]], np.float32)])[0]
    np.testing.assert_array_equal(out, [[0.0, 0.5, 1.0]])


# -- damaged and unsupported files ---------------------------------------------------------------


def test_not_a_model_and_a_missing_file(tmp_path: Path) -> None:
    text = tmp_path / "text.tflite"
    text.write_bytes(b"not a model\n" * 50)
    with pytest.raises(tflite.TFLiteError, match=r"text\.tflite: not a TensorFlow Lite model"):
        tflite.Model(text)
    with pytest.raises(tflite.TFLiteError, match=r"absent\.tflite: cannot read it"):
        tflite.Model(tmp_path / "absent.tflite")


@pytest.mark.parametrize(
    "name", ["alexa_v0.1", "hey_jarvis_v0.1", "embedding_model", "melspectrogram"]
)
def test_damaged_files_are_refused_or_run_never_crash(tmp_path: Path, name: str) -> None:
    """Truncated files and flipped bytes: a WakeWordError naming the file (the TFLite reader's
    error, or the trial run's), or a model that reads and runs (a flipped weight is still a
    model); nothing else escapes, and nothing hangs."""
    data = (MODELS / f"{name}.tflite").read_bytes()
    rng = np.random.default_rng(11)
    bad = tmp_path / "bad.tflite"
    refused = 0
    cuts = [8, 64, 1000, len(data) // 2, len(data) - 1]
    damages = [data[:cut] for cut in cuts]
    for i in range(80):
        b = bytearray(data)
        # anywhere, and (half the time) among the first and last 4 KB, where the FlatBuffer's
        # tables and vectors are (the weights fill the middle)
        places = [rng.integers(len(b))] if i % 2 else rng.integers(0, 4096, size=2)
        for at in [*places, *rng.integers(len(b) - 4096, len(b), size=2)]:
            b[at] = int(rng.integers(256))
        damages.append(bytes(b))
    for damaged in damages:
        bad.write_bytes(damaged)
        try:
            network = _Network(bad, "model", "hint", probe=1760 if "mel" in name else 0)
            network.check()
        except WakeWordError as exc:
            assert str(bad) in str(exc)
            refused += 1
    assert refused >= len(cuts)


def test_a_damaged_custom_model_is_a_wake_word_error(tmp_path: Path) -> None:
    data = bytearray((MODELS / "alexa_v0.1.tflite").read_bytes())
    data[len(data) // 2 :] = b"\xff" * (len(data) - len(data) // 2)
    bad = tmp_path / "mine.tflite"
    bad.write_bytes(bytes(data))
    with pytest.raises(WakeWordError) as caught:
        WakeWordDetector(WakeConfig(models_dir=MODELS, words=(WakeWordConfig("mine", model=bad),)))
    assert str(bad) in str(caught.value)


def with_operator(path: Path, old: str, new_code: int, out: Path) -> Path:
    """A copy of `path` whose operator `old` is replaced by builtin operator `new_code`."""
    data = bytearray(path.read_bytes())
    root = tflite._Table(bytes(data), struct.unpack_from("<I", data, 0)[0])
    number = {name: code for code, name in tflite._OPERATORS.items()}[old]
    patched = 0
    for code in root.tables(1):
        if max(code.scalar(0, "b"), code.scalar(3, "i")) == number:
            for field, fmt in ((0, "<b"), (3, "<i")):
                at = code._field(field)
                if at is not None:
                    struct.pack_into(fmt, data, at, new_code)
            patched += 1
    assert patched == 1
    out.write_bytes(bytes(data))
    return out


def test_a_model_with_an_operator_it_does_not_run_uses_the_tflite_interpreter(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Someone's own model with an operator wakertc does not run still works, on the TFLite
    interpreter, and the log says why (here LOGISTIC is made HARD_SWISH, which it runs)."""
    assert 117 not in tflite._OPERATORS  # HARD_SWISH
    model = with_operator(MODELS / "alexa_v0.1.tflite", "LOGISTIC", 117, tmp_path / "mine.tflite")
    with pytest.raises(tflite.Unsupported, match=r"mine\.tflite: operator builtin operator 117"):
        tflite.Graph(tflite.Model(model))
    caplog.set_level(logging.INFO, "wakertc.wakeword")
    config = WakeConfig(models_dir=MODELS, words=(WakeWordConfig("mine", model=model),))
    detector = WakeWordDetector(config)
    assert detector._words[0].network.interpreter is not None
    assert any("mine.tflite runs on the TFLite interpreter" in r.message for r in caplog.records)
    detector.process(synth("alexa", "en-us"))  # it runs
    code = (
        "import sys\n"
        "from pathlib import Path\n"
        "from wakertc.config import WakeConfig, WakeWordConfig\n"
        "from wakertc.wakeword import WakeWordDetector\n"
        f"WakeWordDetector(WakeConfig(models_dir=Path({str(MODELS)!r}), "
        f"words=(WakeWordConfig('mine', model=Path({str(model)!r})),)))\n"
        "print('ai_edge_litert.interpreter' in sys.modules)\n"
    )
    run = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert run.stdout.strip() == "True"


# -- each operator against the TFLite interpreter, on small synthetic models ---------------------

F32 = np.float32
I32 = np.int32
W = np.random.default_rng(5)


def w(*shape: int) -> np.ndarray:
    return W.standard_normal(shape).astype(F32)


ACT = {"RELU": 1, "RELU_N1_TO_1": 2, "RELU6": 3}
OPERATORS: list[tuple[str, str, list[tuple[int, ...]], list[Any], tuple[int, ...], Any]] = [
    (
        "conv SAME, stride 2x1, RELU6",
        "CONV_2D",
        [(1, 7, 6, 3)],
        [w(4, 3, 3, 3), w(4)],
        (1, 4, 6, 4),
        ("Conv2DOptions", dict(padding=0, strideW=1, strideH=2, fusedActivationFunction=3)),
    ),
    (
        "conv VALID, stride 1x2, dilation 2x1, RELU_N1_TO_1",
        "CONV_2D",
        [(1, 9, 8, 2)],
        [w(3, 2, 3, 2), w(3)],
        (1, 7, 3, 3),
        (
            "Conv2DOptions",
            dict(padding=1, strideW=2, strideH=1, dilationHFactor=2, fusedActivationFunction=2),
        ),
    ),
    (
        "conv SAME 1x3 (the embedding model's)",
        "CONV_2D",
        [(1, 5, 8, 4)],
        [w(6, 1, 3, 4), w(6)],
        (1, 5, 8, 6),
        ("Conv2DOptions", dict(padding=0, strideW=1, strideH=1)),
    ),
    (
        "max pool SAME 3x3 stride 2",
        "MAX_POOL_2D",
        [(1, 7, 5, 3)],
        [],
        (1, 4, 3, 3),
        ("Pool2DOptions", dict(padding=0, strideW=2, strideH=2, filterWidth=3, filterHeight=3)),
    ),
    (
        "max pool SAME 1x2 stride 2 (the embedding model's: nothing to pad)",
        "MAX_POOL_2D",
        [(1, 3, 8, 2)],
        [],
        (1, 3, 4, 2),
        ("Pool2DOptions", dict(padding=0, strideW=2, strideH=1, filterWidth=2, filterHeight=1)),
    ),
    (
        "max pool VALID 2x2 tiles, odd height, RELU",
        "MAX_POOL_2D",
        [(1, 7, 6, 2)],
        [],
        (1, 3, 3, 2),
        (
            "Pool2DOptions",
            dict(
                padding=1,
                strideW=2,
                strideH=2,
                filterWidth=2,
                filterHeight=2,
                fusedActivationFunction=1,
            ),
        ),
    ),
    (
        "max pool VALID 3x2 stride 1x2",
        "MAX_POOL_2D",
        [(1, 6, 6, 2)],
        [],
        (1, 4, 3, 2),
        ("Pool2DOptions", dict(padding=1, strideW=2, strideH=1, filterWidth=2, filterHeight=3)),
    ),
    (
        "fully connected, keep_num_dims, RELU",
        "FULLY_CONNECTED",
        [(2, 3, 5)],
        [w(4, 5), w(4)],
        (2, 3, 4),
        ("FullyConnectedOptions", dict(keepNumDims=True, fusedActivationFunction=1)),
    ),
    (
        "fully connected, no bias",
        "FULLY_CONNECTED",
        [(2, 5)],
        [w(3, 5), None],
        (2, 3),
        ("FullyConnectedOptions", dict()),
    ),
    (
        "mean, keep dims",
        "MEAN",
        [(2, 3, 4)],
        [np.array([1], I32)],
        (2, 1, 4),
        ("ReducerOptions", dict(keepDims=True)),
    ),
    (
        "mean, a repeated axis",
        "MEAN",
        [(2, 3, 4)],
        [np.array([1, 1], I32)],
        (2, 4),
        ("ReducerOptions", dict(keepDims=False)),
    ),
    (
        "sum over two axes",
        "SUM",
        [(2, 3, 4)],
        [np.array([0, 2], I32)],
        (3,),
        ("ReducerOptions", dict(keepDims=False)),
    ),
    (
        "reduce max",
        "REDUCE_MAX",
        [(2, 3, 4)],
        [np.array([2], I32)],
        (2, 3),
        ("ReducerOptions", dict(keepDims=False)),
    ),
    ("softmax, beta 2", "SOFTMAX", [(2, 5)], [], (2, 5), ("SoftmaxOptions", dict(beta=2.0))),
    ("softmax, beta 0", "SOFTMAX", [(2, 5)], [], (2, 5), ("SoftmaxOptions", dict(beta=0.0))),
    (
        "leaky relu, alpha 2",
        "LEAKY_RELU",
        [(2, 6)],
        [],
        (2, 6),
        ("LeakyReluOptions", dict(alpha=2.0)),
    ),
    (
        "leaky relu, alpha 0.2",
        "LEAKY_RELU",
        [(2, 6)],
        [],
        (2, 6),
        ("LeakyReluOptions", dict(alpha=0.2)),
    ),
    (
        "batch matmul, both adjoint",
        "BATCH_MATMUL",
        [(2, 5, 3)],
        [w(2, 4, 5)],
        (2, 3, 4),
        ("BatchMatMulOptions", dict(adjX=True, adjY=True)),
    ),
    (
        "pad",
        "PAD",
        [(1, 3, 4, 2)],
        [np.array([[0, 0], [1, 2], [0, 1], [0, 0]], I32)],
        (1, 6, 5, 2),
        None,
    ),
    ("reshape, -1", "RESHAPE", [(2, 6)], [np.array([3, -1], I32)], (3, 4), None),
    ("squeeze", "SQUEEZE", [(2, 1, 3)], [], (2, 3), ("SqueezeOptions", dict(squeezeDims=[1]))),
    ("transpose", "TRANSPOSE", [(2, 3, 4)], [np.array([0, 2, 1], I32)], (2, 4, 3), None),
    ("expand dims", "EXPAND_DIMS", [(2, 3)], [np.array(1, I32)], (2, 1, 3), None),
    ("expand dims, last", "EXPAND_DIMS", [(2, 3)], [np.array(-1, I32)], (2, 3, 1), None),
    (
        "expand dims, first from the end",
        "EXPAND_DIMS",
        [(2, 3)],
        [np.array(-3, I32)],
        (1, 2, 3),
        None,
    ),
    ("squeeze, every 1", "SQUEEZE", [(1, 2, 1, 3)], [], (2, 3), None),
    (
        "add, broadcast, RELU",
        "ADD",
        [(2, 3)],
        [w(3)],
        (2, 3),
        ("AddOptions", dict(fusedActivationFunction=1)),
    ),
    ("sub", "SUB", [(2, 3)], [w(2, 3)], (2, 3), ("SubOptions", dict())),
    (
        "mul, RELU6",
        "MUL",
        [(2, 3)],
        [w(2, 3)],
        (2, 3),
        ("MulOptions", dict(fusedActivationFunction=3)),
    ),
    ("div", "DIV", [(2, 3)], [np.full((2, 3), 1.7, F32)], (2, 3), ("DivOptions", dict())),
    ("maximum", "MAXIMUM", [(2, 3)], [w(2, 3)], (2, 3), None),
    ("minimum", "MINIMUM", [(2, 3)], [w(3)], (2, 3), None),
    ("squared difference", "SQUARED_DIFFERENCE", [(2, 3)], [w(2, 3)], (2, 3), None),
    *[(op.lower(), op, [(2, 7)], [], (2, 7), None) for op in ("LOGISTIC", "TANH", "EXP", "RELU")],
    *[(op.lower(), op, [(2, 7)], [], (2, 7), None) for op in ("RELU6", "SQUARE")],
    *[(op.lower() + " (positive)", op, [(2, 7)], [], (2, 7), None) for op in ("LOG", "SQRT")],
    ("rsqrt (positive)", "RSQRT", [(2, 7)], [], (2, 7), None),
]


@pytest.mark.parametrize(
    ("name", "op", "shapes", "consts", "out_shape", "opts"),
    OPERATORS,
    ids=[c[0] for c in OPERATORS],
)
def test_each_operator_matches_the_tflite_interpreter(
    tmp_path: Path,
    name: str,
    op: str,
    shapes: list[tuple[int, ...]],
    consts: list[Any],
    out_shape: tuple[int, ...],
    opts: Any,
) -> None:
    from tflite_builder import options, reference, single

    path = single(
        tmp_path / "op.tflite",
        op,
        shapes,
        consts,
        out_shape,
        options(opts[0], **opts[1]) if opts else None,
    )
    rng = np.random.default_rng(9)
    xs = [(rng.standard_normal(s) * 3).astype(F32) for s in shapes]
    if "positive" in name:
        xs = [np.abs(x) + F32(0.1) for x in xs]
    ours = tflite.Graph(tflite.Model(path)).run(xs)[0]
    theirs = reference(path, xs)
    assert ours.shape == theirs.shape and ours.dtype == theirs.dtype, (ours.shape, theirs.shape)
    np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-5)


def test_a_fused_tanh_is_left_to_the_tflite_interpreter(tmp_path: Path) -> None:
    """TFLite's float kernels do not all apply a fused TANH (a convolution's is ignored): such a
    model is not one this interpreter runs, so the detector falls back."""
    from tflite_builder import options, single

    path = single(
        tmp_path / "tanh.tflite",
        "CONV_2D",
        [(1, 4, 4, 1)],
        [w(2, 1, 1, 1), w(2)],
        (1, 4, 4, 2),
        options("Conv2DOptions", padding=1, strideW=1, strideH=1, fusedActivationFunction=4),
    )
    with pytest.raises(tflite.Unsupported, match="fused activation 4"):
        tflite.Graph(tflite.Model(path))


def test_a_zero_stride_or_window_is_refused_at_load(tmp_path: Path) -> None:
    from tflite_builder import options, single

    conv = single(
        tmp_path / "conv.tflite",
        "CONV_2D",
        [(1, 4, 4, 1)],
        [w(2, 1, 1, 1), w(2)],
        (1, 4, 4, 2),
        options("Conv2DOptions", padding=1, strideW=0, strideH=1),
    )
    pool = single(
        tmp_path / "pool.tflite",
        "MAX_POOL_2D",
        [(1, 4, 4, 1)],
        [],
        (1, 4, 4, 1),
        options("Pool2DOptions", padding=1, strideW=1, strideH=1, filterWidth=0, filterHeight=1),
    )
    for path in (conv, pool):
        with pytest.raises(tflite.TFLiteError, match=str(path)):
            tflite.Graph(tflite.Model(path))


def if_ladder(path: Path, depth: int) -> Path:
    """IF -> IF -> ... -> x + 1, `depth` IFs deep, each naming the next subgraph in both of its
    branches (built naively, that is 2^depth graphs)."""
    from tflite_builder import Sub, options, write

    subs = []
    for level in range(depth + 1):
        sub = Sub()
        cond, x = sub.tensor("cond", (), np.bool_), sub.tensor("x", (2,))
        out = sub.tensor("out", (2,))
        sub.inputs, sub.outputs = [cond, x], [out]
        if level < depth:
            branch = options("IfOptions", thenSubgraphIndex=level + 1, elseSubgraphIndex=level + 1)
            sub.op("IF", [cond, cond, x], [out], branch)
        else:
            sub.op("ADD", [x, sub.const("one", np.ones(2))], [out], options("AddOptions"))
        subs.append(sub)
    return write(path, *subs)


@pytest.mark.timeout(20)
def test_if_branches_run_and_deep_nesting_is_refused_quickly(tmp_path: Path) -> None:
    from tflite_builder import reference

    shallow = if_ladder(tmp_path / "shallow.tflite", 5)
    xs = [np.array(True), np.array([1.5, -2.0], F32)]
    np.testing.assert_array_equal(tflite.Graph(tflite.Model(shallow)).run(xs)[0], [2.5, -1.0])
    np.testing.assert_array_equal(reference(shallow, xs), [2.5, -1.0])
    deep = if_ladder(tmp_path / "deep.tflite", 40)
    with pytest.raises(tflite.Unsupported, match="nested deeper than 8"):
        tflite.Graph(tflite.Model(deep))


def test_a_buffer_offset_past_any_file_is_a_damaged_file(tmp_path: Path) -> None:
    """Models over 2 GB keep their weights after the FlatBuffer, at an offset: a wild one is a
    damaged file, not an OverflowError."""
    from tflite_builder import Sub, schema, write

    sub = Sub()
    x = sub.tensor("x", (2,))
    c = sub.const("c", np.ones(2))
    out = sub.tensor("out", (2,))
    sub.inputs, sub.outputs = [x], [out]
    sub.op("ADD", [x, c], [out])
    path = write(tmp_path / "far.tflite", sub)
    model = schema.ModelT.InitFromPackedBuf(path.read_bytes(), 0)
    model.buffers[1].data, model.buffers[1].offset, model.buffers[1].size = None, 1 << 62, 8
    import flatbuffers

    builder = flatbuffers.Builder(1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    path.write_bytes(bytes(builder.Output()))
    with pytest.raises(tflite.TFLiteError, match="damaged"):
        tflite.Graph(tflite.Model(path))


def test_the_melspectrogram_filters_run_as_an_fft_and_others_do_not() -> None:
    """Its two convolutions are a windowed DFT's real and imaginary parts: recognised, and run
    by FFT (the outputs are checked against the TFLite interpreter above); filters that are not
    a DFT, or a DFT with one filter changed, are not taken for one."""
    graph = tflite.Graph(tflite.Model(MODELS / "melspectrogram.tflite"))
    convs = [s for s in graph.steps if s.op.name == "CONV_2D"]
    assert [s.kernel.__name__ for s in convs] == ["transform", "transform"]
    filters = graph.subgraph.tensors[convs[1].op.inputs[1]].data[:, 0, :, 0]
    found = tflite._as_dft(filters, None)
    assert found is not None and found[1] is False  # the real part: cosines
    assert tflite._as_dft(w(257, 512), None) is None
    changed = filters.copy()
    changed[100, 3] += 0.01
    assert tflite._as_dft(changed, None) is None
    assert tflite._as_dft(filters, np.ones(257, F32)) is None  # a bias is not a DFT's


@pytest.mark.parametrize("sign", [1.0, -1.0])
@pytest.mark.parametrize("sine", [False, True], ids=["cosines", "sines"])
def test_dft_filters_of_either_sign_run_as_the_tflite_interpreter_runs_them(
    tmp_path: Path, sine: bool, sign: float
) -> None:
    """The FFT path on its own (the melspectrogram squares both parts, so a wrong sign of the
    sine part would not show there): 16-tap frames with a Hann window, hop 4."""
    from tflite_builder import options, reference, single

    taps = 16
    t = np.arange(taps)
    window = np.hanning(taps)
    wave = np.sin if sine else np.cos
    filters = np.stack([sign * window * wave(2 * np.pi * k * t / taps) for k in range(9)])
    path = single(
        tmp_path / "dft.tflite",
        "CONV_2D",
        [(1, 1, 64, 1)],
        [filters.astype(F32)[:, None, :, None], np.zeros(9, F32)],
        (1, 1, 13, 9),
        options("Conv2DOptions", padding=1, strideW=4, strideH=1),
    )
    graph = tflite.Graph(tflite.Model(path))
    assert graph.steps[0].kernel.__name__ == "transform"
    x = (np.random.default_rng(2).standard_normal((1, 1, 64, 1)) * 100).astype(F32)
    np.testing.assert_allclose(graph.run([x])[0], reference(path, [x]), rtol=0, atol=1e-3)
