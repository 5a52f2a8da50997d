"""The stock openWakeWord 0.6.0 package, the wake-word reference, on wakertc's own interpreter.

openWakeWord 0.6.0 runs TFLite models with `import tflite_runtime.interpreter as tflite`. The
`tflite-runtime` wheels are built against NumPy 1 (under NumPy 2 they fail at `Interpreter()`) and
stop at Python 3.11, so wakertc runs its models on `ai-edge-litert`, Google's successor to
`tflite-runtime`: the same TensorFlow Lite interpreter and the same `Interpreter` API, built for
NumPy 2. For the stock package to stay a fair reference, it runs on that same interpreter: before
it is imported, `ai_edge_litert.interpreter` is registered under the name
`tflite_runtime.interpreter` (`tflite_runtime` itself is left out of the dependency sets:
requirements/overrides.txt). Nothing of openWakeWord's code is changed; this alias is its only
difference from a plain `pip install`.

Only the test and bench harness uses this (tests/test_wakeword.py, scripts/bench_wakeword.py,
scripts/bench_oww.py); the daemon never imports openwakeword.
"""

from __future__ import annotations

import sys
import types
from pathlib import Path
from typing import Any


def provide_tflite_runtime() -> None:
    """Make `import tflite_runtime.interpreter` give `ai_edge_litert.interpreter`."""
    from ai_edge_litert import interpreter

    existing = sys.modules.get("tflite_runtime.interpreter")
    if existing is interpreter:
        return
    if existing is not None:
        raise RuntimeError(
            f"tflite_runtime is already imported from {getattr(existing, '__file__', '?')}; "
            "the reference must run on ai_edge_litert, as wakertc does"
        )
    package = types.ModuleType("tflite_runtime", "ai_edge_litert, under tflite-runtime's name")
    package.__path__ = []  # a package, so that `import tflite_runtime.interpreter` resolves
    package.interpreter = interpreter  # type: ignore[attr-defined]
    sys.modules["tflite_runtime"] = package
    sys.modules["tflite_runtime.interpreter"] = interpreter


def stock_model(models_dir: Path, words: list[str]) -> Any:
    """A stock `openwakeword.Model` for `<word>_v0.1.tflite` in `models_dir`, on ai_edge_litert."""
    provide_tflite_runtime()
    import openwakeword

    model = openwakeword.Model(
        wakeword_models=[str(models_dir / f"{word}_v0.1.tflite") for word in words],
        inference_framework="tflite",
        melspec_model_path=str(models_dir / "melspectrogram.tflite"),
        embedding_model_path=str(models_dir / "embedding_model.tflite"),
    )
    from ai_edge_litert.interpreter import Interpreter

    # A guard against the alias silently not being used (e.g. a real tflite_runtime found first).
    if not isinstance(model.preprocessor.melspec_model, Interpreter):
        raise RuntimeError("the stock openwakeword package is not running on ai_edge_litert")
    return model
