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
    stream = tflite.RowStream.of(graph, 8)
    assert stream is not None
    rows: list[int] = []
    for step in graph.steps:
        kernel = step.kernel

        def counted(xs: list[np.ndarray], kernel: Any = kernel) -> list[np.ndarray]:
            rows.append(xs[0].shape[1])
            return kernel(xs)  # type: ignore[no-any-return]

        step.kernel = counted
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
