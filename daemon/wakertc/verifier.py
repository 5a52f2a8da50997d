"""A per-household wake-word verifier: openWakeWord's custom-verifier idea on wakertc's detector.

The stock model is trained on many synthetic voices and misses some real ones (a phrase said a
little fast scores 0.01-0.2 against a 0.5 threshold). A household hears the same few voices, so
`wakertc enroll` trains a small logistic regression on the model's own input (the last `window`
embeddings, 16 x 96 values) from the household's clips and from negatives. At run time the base
model proposes: when its score reaches the verifier's lower `base_threshold`, the verifier
decides: the proposal fires once its probability reaches `accept` on `confirm` chunks in a row,
each chunk's window also within `similar` (cosine) of an enrolled saying's.
A score at or above the word's own threshold fires as it always did unless the verifier is sure
it is not the phrase (a probability below `veto`, 0.4 from `wakertc enroll`: chosen on the
household bench's tuning set as high as keeps every saying of the household and of guests that
the verifier hears without one, with a margin), so the verifier adds the near misses it
recognises and takes back the stock model's false accepts it is sure of. It costs a dot
product, and one against each enrolled window (135 for five people) when the probability is
reached, only on proposals, so the idle path stays what the three models cost.

The file, `<config stem>.verifier.json` beside the config, is JSON (the model readable and
diffable, written atomically with `atomic.write_atomic`):

    {"format": "wakertc-verifier", "version": 2,
     "words": {"hey_jarvis": {"model_sha256": ..., "window": 16, "feature_size": 96,
                              "base_threshold": 0.005, "accept": 0.95, "confirm": 1,
                              "mean": [...], "scale": [...], "weights": [...], "bias": 0.0,
                              "veto": 0.4, "similar": 0.7,
                              "people": {"alice": {"windows": 27, "positives": "<base64>"}}}}}

`people` keeps each enrolled person's positive windows, so that enrolling someone else or
`enroll --remove` can retrain without the original recordings. They are base64 of
little-endian float32 rows of `window x feature_size` values: ~230 KB a person enrolled with
three clips, where version 1's number lists (still read) took ~420 KB and ~41,000 floats to
parse. For five people that was 23 ms and a 10 MB peak at every start, against 3 ms and 2.3
MB now. The daemon decodes them only for `similar` (`load(..., training_data=False)` skips
them in a file without it).

Errors: `VerifierError`, whose message names the file and the problem; the detector logs it and
runs the stock model alone.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from .atomic import write_atomic

FORMAT = "wakertc-verifier"
VERSION = 2
READABLE = (1, 2)
"""Versions `load` reads: 1 kept the training windows as number lists."""
FEATURE_SIZE = 96
DEFAULT_ACCEPT = 0.8
DEFAULT_CONFIRM = 1
DEFAULT_VETO = 0.4
DEFAULT_SIMILAR = 0.7

FloatArray = npt.NDArray[np.float32]


class VerifierError(Exception):
    """A verifier file that cannot be used; the message names the file and the problem."""


def verifier_path(config_source: Path) -> Path:
    """Where the verifier for the config at `config_source` lives: beside it."""
    return config_source.with_name(f"{config_source.stem}.verifier.json")


def model_digest(path: Path) -> str:
    """SHA-256 of a wake-word model file: a verifier only fits the model it was trained on."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


@dataclass
class WordVerifier:
    """The trained verifier for one wake word, and the enrolled people it was trained on."""

    model_sha256: str
    window: int
    base_threshold: float
    """Base-model score at which the verifier is asked (the proposal threshold)."""
    accept: float
    """Verifier probability at or above which a proposal counts as the phrase."""
    confirm: int
    """Consecutive 80 ms chunks that must count as the phrase before it fires: a real saying
    stays recognisable for several chunks, a chance match in other speech rarely does."""
    mean: FloatArray
    scale: FloatArray
    weights: FloatArray
    bias: float
    veto: float = 0.0
    """Verifier probability below which even a base score at the word's threshold does not
    fire: the stock model's own false accepts the verifier is sure are not the phrase. 0 (the
    default, and files written before it existed) vetoes nothing."""
    people: dict[str, FloatArray] = field(default_factory=dict)
    """Per enrolled person, the positive feature windows (flattened), one row each."""
    similar: float = 0.0
    """Cosine similarity (of the standardised window) to the nearest enrolled saying's window,
    at or above which an accepted probability counts: a second opinion of another kind. The
    regression draws one plane through 1536 dimensions from a few dozen sayings, and a string
    of near misses in a household voice can land on the phrase's side of it far from any
    saying; the nearest saying is then plainly unlike it. 0 (files written before it) asks
    nothing more of a proposal."""
    _templates: FloatArray | None = field(default=None, init=False, repr=False, compare=False)

    def probability(self, features: FloatArray) -> float:
        """Probability that the newest `window` embeddings end the household's wake phrase."""
        x = (features[-self.window :].reshape(-1) - self.mean) / self.scale
        z = float(np.dot(x, self.weights)) + self.bias
        return 1.0 / (1.0 + math.exp(-max(min(z, 60.0), -60.0)))

    def similarity(self, features: FloatArray) -> float:
        """Cosine similarity of the newest `window` embeddings, standardised, to the nearest
        enrolled window (-1 with nobody enrolled)."""
        return float(self.similarities(features[-self.window :].reshape(1, -1))[0])

    def similarities(self, windows: FloatArray) -> FloatArray:
        """`similarity` of each row of `windows` (flattened windows)."""
        x = (windows - self.mean) / self.scale
        norms = np.linalg.norm(x, axis=1)
        templates = self.templates()
        if not len(templates):
            return np.full(len(x), -1.0, np.float32)
        best = (x @ templates.T).max(axis=1)
        return np.where(norms > 0, best / np.maximum(norms, 1e-12), -1.0).astype(np.float32)

    def templates(self) -> FloatArray:
        """The enrolled windows standardised and scaled to unit length, one row each (made
        once; the people must not change afterwards). `load(..., training_data=False)` makes
        them and drops the windows."""
        if self._templates is None:
            rows = [r for r in self.people.values() if len(r)]
            if self.similar and not rows:  # e.g. a copy of a verifier loaded without them
                raise VerifierError("no enrolled windows to compare with")
            x = (np.concatenate(rows) - self.mean) / self.scale if rows else np.zeros((0, 1))
            norms = np.linalg.norm(x, axis=1, keepdims=True)
            self._templates = (x / np.maximum(norms, 1e-12)).astype(np.float32)
        return self._templates


def train(
    positives: FloatArray,
    negatives: FloatArray,
    *,
    l2: float = 1.0,
    steps: int = 400,
) -> tuple[FloatArray, FloatArray, FloatArray, float]:
    """Logistic regression with L2 and balanced class weights, by full-batch gradient descent
    with Adam (NumPy only; a few seconds on a Pi): (mean, scale, weights, bias)."""
    x = np.concatenate((positives, negatives)).astype(np.float64)
    y = np.concatenate((np.ones(len(positives)), np.zeros(len(negatives))))
    mean = x.mean(axis=0)
    scale = x.std(axis=0) + 1e-3
    x = (x - mean) / scale
    sample_w = np.where(y == 1, 0.5 / len(positives), 0.5 / len(negatives))
    w = np.zeros(x.shape[1])
    b = 0.0
    m_w, v_w, m_b, v_b = np.zeros_like(w), np.zeros_like(w), 0.0, 0.0
    lr, beta1, beta2 = 0.01, 0.9, 0.999
    reg = l2 / len(x)
    for step in range(1, steps + 1):
        p = 1.0 / (1.0 + np.exp(-np.clip(x @ w + b, -60, 60)))
        err = (p - y) * sample_w
        g_w = x.T @ err + reg * w
        g_b = float(err.sum())
        m_w = beta1 * m_w + (1 - beta1) * g_w
        v_w = beta2 * v_w + (1 - beta2) * g_w * g_w
        m_b = beta1 * m_b + (1 - beta1) * g_b
        v_b = beta2 * v_b + (1 - beta2) * g_b * g_b
        corr1, corr2 = 1 - beta1**step, 1 - beta2**step
        w -= lr * (m_w / corr1) / (np.sqrt(v_w / corr2) + 1e-8)
        b -= lr * (m_b / corr1) / (math.sqrt(v_b / corr2) + 1e-8)
    f32 = np.float32
    return mean.astype(f32), scale.astype(f32), w.astype(f32), float(b)


# --- the file -----------------------------------------------------------------------------------


def _floats(value: Any, size: int, where: str) -> FloatArray:
    if not isinstance(value, list) or len(value) != size:
        got = f"{len(value)} values" if isinstance(value, list) else type(value).__name__
        raise VerifierError(f"{where}: expected a list of {size} numbers, got {got}")
    try:
        array = np.asarray(value, dtype=np.float32)
    except (TypeError, ValueError) as exc:
        raise VerifierError(f"{where}: expected numbers ({exc})") from exc
    if array.shape != (size,) or not np.all(np.isfinite(array)):
        raise VerifierError(f"{where}: expected {size} finite numbers")
    return array


def _number(entry: dict[str, Any], key: str, where: str, low: float, high: float) -> float:
    value = entry.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
        raise VerifierError(f"{where}.{key}: expected a number in [{low}, {high}], got {value!r}")
    return float(value)


def _word(entry: Any, where: str, version: int, training_data: bool) -> WordVerifier:
    if not isinstance(entry, dict):
        raise VerifierError(f"{where}: expected an object")
    feature_size = entry.get("feature_size")
    if feature_size != FEATURE_SIZE:
        raise VerifierError(
            f"{where}.feature_size: {feature_size!r}, but the embedding model gives "
            f"{FEATURE_SIZE} values (made for another model?)"
        )
    window = entry.get("window")
    if isinstance(window, bool) or not isinstance(window, int) or not 1 <= window <= 1000:
        raise VerifierError(f"{where}.window: expected a whole number of embeddings")
    size = window * FEATURE_SIZE
    digest = entry.get("model_sha256")
    if not isinstance(digest, str) or len(digest) != 64:
        raise VerifierError(f"{where}.model_sha256: expected a SHA-256 hex digest")
    people_raw = entry.get("people", {})
    if not isinstance(people_raw, dict):
        raise VerifierError(f"{where}.people: expected an object")
    similar = _number(entry, "similar", where, 0.0, 1.0) if "similar" in entry else 0.0
    people: dict[str, FloatArray] = {}
    for name, person in people_raw.items():
        if not isinstance(person, dict):
            raise VerifierError(f"{where}.people.{name}: expected an object")
        if not training_data and not similar:  # the daemon needs the names only
            people[name] = np.zeros((0, size), np.float32)
            continue
        at = f"{where}.people.{name}.positives"
        people[name] = _windows(person.get("positives"), size, at, version)
        if len(people[name]) == 0:
            raise VerifierError(f"{at}: no windows")
    if similar and not people:
        raise VerifierError(f"{where}.similar: {similar} needs enrolled windows, and nobody is")
    accept = _number(entry, "accept", where, 0.0, 1.0)
    # a veto above the acceptance would both veto a chunk and let its streak fire it
    veto = _number(entry, "veto", where, 0.0, accept) if "veto" in entry else 0.0
    verifier = WordVerifier(
        model_sha256=digest,
        window=window,
        base_threshold=_number(entry, "base_threshold", where, 0.0, 1.0),
        accept=accept,
        confirm=int(_number(entry, "confirm", where, 1, 50)),
        mean=_floats(entry.get("mean"), size, f"{where}.mean"),
        scale=_floats(entry.get("scale"), size, f"{where}.scale"),
        weights=_floats(entry.get("weights"), size, f"{where}.weights"),
        bias=_number(entry, "bias", where, -1e6, 1e6),
        veto=veto,
        people=people,
        similar=similar,
    )
    if not training_data and similar:
        # the daemon compares with the windows, made once here, and keeps only the names
        verifier.templates()
        verifier.people = {name: np.zeros((0, size), np.float32) for name in people}
    return verifier


def _windows(value: Any, size: int, where: str, version: int) -> FloatArray:
    """Rows of `size` values: version 1 wrote a list of number lists, version 2 a base64
    string of little-endian float32."""
    if version == 1:
        if not isinstance(value, list):
            raise VerifierError(f"{where}: expected a list of windows")
        rows = [_floats(r, size, f"{where}[{i}]") for i, r in enumerate(value)]
        return np.stack(rows) if rows else np.zeros((0, size), np.float32)
    if not isinstance(value, str):
        raise VerifierError(f"{where}: expected a base64 string of float32 windows")
    try:
        raw = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise VerifierError(f"{where}: not base64 ({exc})") from exc
    if len(raw) % (size * 4):
        raise VerifierError(f"{where}: {len(raw)} bytes is not a whole number of windows")
    array = np.frombuffer(raw, "<f4").astype(np.float32).reshape(-1, size)
    if not np.all(np.isfinite(array)):
        raise VerifierError(f"{where}: expected finite numbers")
    return array


def _encoded(rows: FloatArray) -> str:
    return base64.b64encode(np.ascontiguousarray(rows, "<f4").tobytes()).decode("ascii")


def load(path: Path, *, training_data: bool = True) -> dict[str, WordVerifier]:
    """The verifiers in `path`, by word; `VerifierError` naming the file if it is unusable.
    Without `training_data`, the people's windows are not decoded (their names are kept)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise VerifierError(f"{path}: cannot read the verifier file: {exc}") from exc
    except json.JSONDecodeError as exc:
        raise VerifierError(f"{path}: not valid JSON ({exc}); re-run `wakertc enroll`") from exc
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise VerifierError(f'{path}: not a wakertc verifier file (no "format": "{FORMAT}")')
    version = data.get("version")
    if isinstance(version, bool) or version not in READABLE:
        raise VerifierError(
            f"{path}: verifier format version {version!r}, this wakertc reads "
            f"versions {', '.join(map(str, READABLE))}; re-run `wakertc enroll`"
        )
    words = data.get("words")
    if not isinstance(words, dict):
        raise VerifierError(f'{path}: "words" must be an object')
    try:
        return {
            name: _word(entry, f"words.{name}", version, training_data)
            for name, entry in words.items()
        }
    except VerifierError as exc:
        raise VerifierError(f"{path}: {exc}") from exc


def _rounded(array: FloatArray) -> list[float]:
    return [round(float(v), 6) for v in array]


def save(path: Path, verifiers: dict[str, WordVerifier]) -> None:
    """Write `verifiers` to `path` atomically (a crash leaves the old file)."""
    words = {
        name: {
            "model_sha256": v.model_sha256,
            "window": v.window,
            "feature_size": FEATURE_SIZE,
            "base_threshold": v.base_threshold,
            "accept": v.accept,
            "confirm": v.confirm,
            "mean": _rounded(v.mean),
            "scale": _rounded(v.scale),
            "weights": _rounded(v.weights),
            "bias": v.bias,
            "veto": v.veto,
            "similar": v.similar,
            "people": {
                person: {"windows": len(rows), "positives": _encoded(rows)}
                for person, rows in sorted(v.people.items())
            },
        }
        for name, v in verifiers.items()
    }
    text = json.dumps({"format": FORMAT, "version": VERSION, "words": words}, separators=(",", ":"))
    write_atomic(path, text + "\n", mode=0o644)
