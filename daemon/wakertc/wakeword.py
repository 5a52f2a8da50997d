"""Wake-word detection: openWakeWord's models run on NumPy.

The stock `openwakeword` package imports scikit-learn, SciPy and onnxruntime even for TFLite
inference (~1.4 s and ~110 MB here), which a Raspberry Pi cannot afford. This module runs the same
three-stage pipeline reproducing openWakeWord 0.6.0's streaming behaviour exactly
(`openwakeword/utils.py` `AudioFeatures`, `openwakeword/model.py` `Model.predict`);
`tests/test_wakeword.py` checks the scores against the stock package. The models run on wakertc's
own small TFLite interpreter (`tflite.py`: ~21 MB less resident memory than Google's
`ai_edge_litert`, and the embedding model streamed), or on `ai_edge_litert` for a model of one's
own that uses an operator `tflite.py` does not run (imported only then).

Per 80 ms chunk (1280 samples at 16 kHz):

1. melspectrogram model over the chunk plus the 480 samples before it -> 8 frames of 32 bins
   (5 for the first chunk after start or reset, which has no history), transformed `x/10 + 2`;
2. embedding model over the last 76 mel frames (the buffer starts as 76 rows of ones) -> one
   96-value feature;
3. each wake-word model over its last N features (16 for the official models) -> one score.

All words share stages 1 and 2. The feature history starts as the embeddings of 4 s of seeded
random noise, as openWakeWord's does (it uses unseeded noise; a fixed seed keeps ours repeatable),
and scores are forced to 0 for the first 5 chunks, while that noise still fills the window.

Errors: `WakeWordError` for any model that cannot be loaded (missing, not TFLite, damaged, wrong
shape, or failing a trial run on silence);
`ValueError` for audio that is not int16 mono.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from . import tflite
from . import verifier as verifier_file
from .config import WakeConfig, WakeWordConfig
from .verifier import WordVerifier

log = logging.getLogger(__name__)

SAMPLE_RATE = 16000
CHUNK_SAMPLES = 1280
"""Samples per model step (80 ms); input of any length is buffered into chunks of this size."""

# The melspectrogram model uses 400-sample windows with a 160-sample hop, so each chunk is
# computed with the 3 hops before it to produce 8 frames that continue the previous chunk's.
_MEL_CONTEXT = 3 * 160
_MEL_BINS = 32
_MEL_WINDOW = 76
_MEL_STRIDE = 8
_FEATURE_SIZE = 96
_WARMUP_CHUNKS = 5
_MAX_INPUT = 1 << 20
"""Values in a model's input beyond which its shape is taken for damage (the models take 1,760
samples, 76 x 32 mel bins or 16 x 96 features)."""

FEATURE_NOISE_SEED = 0
"""Seed of the 4 s of noise whose embeddings fill the feature history at start (see module doc)."""
_NOISE_SAMPLES = 4 * SAMPLE_RATE

BOOTSTRAP_HINT = "run scripts/bootstrap.sh to fetch the default models, or set wake.models_dir"

SampleArray = npt.NDArray[np.int16]
FloatArray = npt.NDArray[np.float32]


class WakeWordError(Exception):
    """A wake-word model could not be loaded; the message names the file and what to do."""


@dataclass(frozen=True)
class Detection:
    """A wake word heard in the audio."""

    word: str
    score: float
    t: float
    """Seconds of audio fed since start or `reset()`, at the end of the chunk that fired."""
    verifier: float | None = None
    """The household verifier's probability for this proposal; None when no verifier ran."""
    similarity: float | None = None
    """The window's similarity to the nearest enrolled saying; None when not asked (no
    verifier, a probability below its acceptance, or a verifier without `similar`)."""


class _Network:
    """One model, run by wakertc's own interpreter (`tflite.py`) or, for a model that uses an
    operator it does not run, by the TFLite interpreter (`ai_edge_litert`, imported only then)."""

    def __init__(self, path: Path, what: str, missing_hint: str, probe: int = 0) -> None:
        if not path.is_file():
            raise WakeWordError(f"{path}: {what} not found; {missing_hint}")
        self.path, self.what = path, what
        self.graph: tflite.Graph | None = None
        self.interpreter: Any = None
        try:
            self.graph = tflite.Graph(tflite.Model(path))
            self.input_shape = [int(n) for n in self.graph.input_shape]
            self.output_shape = [int(n) for n in self.graph.output_shape]
        except IndexError as exc:  # no input or no output
            raise WakeWordError(f"{path}: {what} has no input or no output") from exc
        except tflite.Unsupported as exc:
            log.info("%s runs on the TFLite interpreter: %s", path, exc)
            self.interpreter = self._interpreter()
        except tflite.TFLiteError as exc:
            raise WakeWordError(
                f"{path}: {what} is not a TensorFlow Lite model ({exc}); "
                "point the config at an openWakeWord .tflite file"
            ) from exc
        if self.graph is None:
            self.input_shape = [int(n) for n in self.interpreter.get_input_details()[0]["shape"]]
            self.output_shape = [int(n) for n in self.interpreter.get_output_details()[0]["shape"]]
        self._size: tuple[int, ...] = ()
        self.probe = probe
        """Input length to try a resizable model with (the melspectrogram model's samples)."""

    def _interpreter(self) -> Any:
        from ai_edge_litert.interpreter import Interpreter

        try:
            return Interpreter(model_path=str(self.path), num_threads=1)
        except (ValueError, RuntimeError) as exc:
            raise WakeWordError(
                f"{self.path}: {self.what} is not a TensorFlow Lite model ({exc}); "
                "point the config at an openWakeWord .tflite file"
            ) from exc

    def check(self) -> None:
        """Run the model once on silence, so that a model that cannot run fails here, named."""
        shape = list(self.input_shape)
        if self.probe:
            shape[-1] = self.probe
        if any(n < 1 for n in shape) or np.prod(shape, dtype=np.float64) > _MAX_INPUT:
            raise WakeWordError(
                f"{self.path}: {self.what} declares an input of shape {self.input_shape}"
            )
        try:
            out = self.run(np.zeros(shape, np.float32))
        except (
            ValueError,
            RuntimeError,
            IndexError,
            KeyError,
            TypeError,
            ZeroDivisionError,
            MemoryError,
        ) as exc:
            raise WakeWordError(f"{self.path}: {self.what} could not be run ({exc})") from exc
        if self.graph is not None and out.shape[-1:] != tuple(self.output_shape[-1:]):
            raise WakeWordError(
                f"{self.path}: {self.what} gives output of shape {list(out.shape)}, "
                f"not the {self.output_shape} it declares"
            )

    def run(self, x: FloatArray) -> FloatArray:
        """The model's output for one input."""
        if self.graph is not None:
            out: FloatArray = self.graph.run([x])[0]
            return out
        it = self.interpreter
        index = it.get_input_details()[0]["index"]
        if self._size != x.shape:
            # Resizing reallocates, so only when the shape changes; the XNNPACK delegate cannot
            # prepare a dynamic input shape, so it comes before the first allocation.
            it.resize_tensor_input(index, list(x.shape), strict=True)
            try:
                it.allocate_tensors()
            except RuntimeError as exc:
                raise WakeWordError(
                    f"{self.path}: {self.what} could not be prepared ({exc})"
                ) from exc
            self._size = x.shape
        it.set_tensor(index, x)
        it.invoke()
        result: FloatArray = it.get_tensor(it.get_output_details()[0]["index"])
        return result


class _FeatureFrontEnd:
    """Stages 1 and 2, shared by all words: audio chunks in, a history of embeddings out."""

    def __init__(self, models_dir: Path, history: int) -> None:
        mel_path = models_dir / "melspectrogram.tflite"
        emb_path = models_dir / "embedding_model.tflite"
        self._mel = _Network(mel_path, "melspectrogram model", BOOTSTRAP_HINT, probe=1760)
        self._emb = _Network(emb_path, "embedding model", BOOTSTRAP_HINT)
        mel_in, emb_in = self._mel.input_shape, self._emb.input_shape
        if len(mel_in) != 2 or emb_in[1:] != [_MEL_WINDOW, _MEL_BINS, 1]:
            raise WakeWordError(
                f"{mel_path.parent}: melspectrogram/embedding models have unexpected shapes "
                f"({mel_in}, {emb_in}); {BOOTSTRAP_HINT}"
            )
        self._mel.check()
        self._emb.check()
        # The embedding model as a stream: each chunk moves its window 8 mel frames on, and
        # only the rows those frames change are computed (see tflite.RowStream).
        graph = self._emb.graph
        self._stream = tflite.RowStream.of(graph, _MEL_STRIDE) if graph is not None else None
        self._initial = self._noise_features(history)
        self.features = self._initial.copy()
        """The last `history` embeddings, oldest first."""
        self._mel_frames = np.ones((_MEL_WINDOW, _MEL_BINS), dtype=np.float32)
        self._context = np.zeros(0, dtype=np.float32)
        self.reset()

    def reset(self) -> None:
        """Forget all audio: back to the state right after construction."""
        np.copyto(self.features, self._initial)
        self._mel_frames.fill(1.0)
        self._context = np.zeros(0, dtype=np.float32)
        if self._stream is not None:
            self._stream.reset()

    def push(self, chunk: SampleArray) -> None:
        """Add one 1280-sample chunk: append its embedding to `features`."""
        audio = np.concatenate((self._context, chunk.astype(np.float32)))
        self._context = audio[-_MEL_CONTEXT:]
        frames = self._melspectrogram(audio)
        n = len(frames)
        self._mel_frames[:-n] = self._mel_frames[n:]
        self._mel_frames[-n:] = frames
        self.features[:-1] = self.features[1:]
        self.features[-1] = self._embed(self._mel_frames, n)

    def _melspectrogram(self, audio: FloatArray) -> FloatArray:
        # The first chunk after a reset is shorter (no context yet), exactly as in openWakeWord.
        spec = self._mel.run(audio[None, :]).reshape(-1, _MEL_BINS)
        # openWakeWord's fixed transform, in float32 like theirs (NumPy's stubs need the scalars
        # typed to see that the result stays float32)
        return spec / np.float32(10) + np.float32(2)

    def _noise_features(self, history: int) -> FloatArray:
        """Embeddings of seeded noise, with the same values as openWakeWord's `_get_embeddings`."""
        noise = np.random.RandomState(FEATURE_NOISE_SEED).randint(-1000, 1000, _NOISE_SAMPLES)
        samples = noise.astype(np.int16).astype(np.float32)[None, :]
        spec = self._mel.run(samples).reshape(-1, _MEL_BINS) / np.float32(10) + np.float32(2)
        starts = range(0, len(spec) - _MEL_WINDOW + 1, _MEL_STRIDE)
        noise_features = np.stack(
            [self._embed(spec[i : i + _MEL_WINDOW], _MEL_STRIDE if i else 0) for i in starts]
        )
        features = np.zeros((history, _FEATURE_SIZE), dtype=np.float32)
        # A model wider than the noise history (none of the official ones) sees zeros first;
        # openWakeWord itself would fail on such a model.
        kept = noise_features[-history:]
        features[history - len(kept) :] = kept
        return features

    def _embed(self, mel_window: FloatArray, shift: int) -> FloatArray:
        """The embedding of `mel_window`, which is the previous one moved `shift` frames on."""
        x = np.ascontiguousarray(mel_window[None, :, :, None])
        out = self._stream.step(x, shift) if self._stream is not None else self._emb.run(x)
        embedding: FloatArray = out.reshape(_FEATURE_SIZE)
        return embedding


class _Word:
    """Stage 3 for one wake word: its model, threshold and refractory state."""

    def __init__(self, config: WakeWordConfig, index: int, models_dir: Path) -> None:
        self.config = config
        self.path = config.model_path(models_dir)
        what = f"wake-word model for '{config.name}'"
        hint = BOOTSTRAP_HINT if config.model is None else f"check wake.words[{index}].model"
        self.network = _Network(self.path, what, hint)
        shape_in, shape_out = self.network.input_shape, self.network.output_shape
        if len(shape_in) != 3 or shape_in[0] != 1 or shape_in[2] != _FEATURE_SIZE:
            raise WakeWordError(
                f"{self.path}: {what} takes input of shape {shape_in}, expected [1, N, "
                f"{_FEATURE_SIZE}]; is this an openWakeWord wake-word model "
                "(not the melspectrogram or embedding model)?"
            )
        if shape_out != [1, 1]:
            raise WakeWordError(
                f"{self.path}: {what} has output shape {shape_out}, expected [1, 1] "
                "(one score; multi-class models are not supported)"
            )
        self.network.check()
        self.window = shape_in[1]
        self.last_fired: float | None = None
        self.verifier: WordVerifier | None = None
        self.streak = 0
        """Consecutive chunks the verifier has accepted."""
        self.pending_veto: Detection | None = None
        """Where the stock rule would have fired in the current run of scores at the threshold,
        had the verifier not vetoed it: reported when the run ends without a detection."""
        self.last_vetoed: float | None = None
        """When the last veto was pending: vetoes keep the refractory period, as fires do."""

    def score(self, features: FloatArray) -> float:
        """This word's score for the newest `window` features."""
        return float(self.network.run(features[None, -self.window :]).reshape(-1)[0])


class WakeWordDetector:
    """Streams 16 kHz int16 mono audio through the configured wake-word models."""

    def __init__(self, config: WakeConfig, verifier: Path | None = None) -> None:
        if not config.words:
            raise WakeWordError("no wake words configured (wake.words is empty)")
        self.config = config
        self._words = [_Word(w, i, config.models_dir) for i, w in enumerate(config.words)]
        self.verifier_path = verifier
        if verifier is not None and verifier.exists():
            self._attach_verifier(verifier)
        self._front = _FeatureFrontEnd(config.models_dir, max(w.window for w in self._words))
        self._pending = np.zeros(0, dtype=np.int16)
        self._chunks = 0
        self.last_scores: dict[str, float] = {w.config.name: 0.0 for w in self._words}
        """Each word's score for the most recent chunk (for debugging and tuning)."""
        self.best_scores: dict[str, float] = {w.config.name: 0.0 for w in self._words}
        """Each word's highest score since the detector was made: how close the word came."""
        self.vetoes = 0
        """Base-model detections the household verifier has vetoed since the detector was made."""
        self.vetoed: list[Detection] = []
        """Those reported by the last `process` call (each `verifier` the probability that
        vetoed it), to show them (`wakertc detect`)."""
        log.info(
            "wake words: %s (models in %s)",
            ", ".join(f"{w.config.name} >= {w.config.threshold}" for w in self._words),
            config.models_dir,
        )

    def _attach_verifier(self, path: Path) -> None:
        """Use the household verifier in `path`; a bad or mismatched file is logged and ignored
        (the stock model keeps working), never fatal."""
        try:
            verifiers = verifier_file.load(path, training_data=False)
        except verifier_file.VerifierError as exc:
            log.error("ignoring the wake-word verifier: %s", exc)
            return
        by_name = {w.config.name: w for w in self._words}
        for name, verifier in verifiers.items():
            word = by_name.get(name)
            problem = None
            if word is None:
                problem = f"it is for wake word '{name}', which is not configured"
            elif verifier.window != word.window:
                problem = (
                    f"it is for a model with a {verifier.window}-embedding window, "
                    f"{word.path} has {word.window}"
                )
            elif verifier.model_sha256 != verifier_file.model_digest(word.path):
                problem = f"it was trained for another model than {word.path}; re-run enroll"
            if problem is not None:
                log.error("ignoring the wake-word verifier: %s: %s", path, problem)
                continue
            assert word is not None
            word.verifier = verifier
            log.info(
                "wake word %s: household verifier for %s (proposals from score %.3f, "
                "vetoes below %.2f) from %s",
                name,
                ", ".join(sorted(verifier.people)) or "nobody",
                verifier.base_threshold,
                verifier.veto,
                path,
            )

    def _word(self, name: str) -> _Word:
        for word in self._words:
            if word.config.name == name:
                return word
        raise KeyError(name)

    def threshold(self, name: str) -> float:
        """Word `name`'s own (base-model) threshold."""
        return self._word(name).config.threshold

    def window(self, name: str) -> int:
        """How many embeddings word `name`'s model looks at."""
        return self._word(name).window

    def model_path(self, name: str) -> Path:
        """The model file of word `name`."""
        return self._word(name).path

    def score_window(self, name: str, window: FloatArray) -> float:
        """Word `name`'s base score for one window of embeddings (window x 96)."""
        return self._word(name).score(window.astype(np.float32))

    def trace(self, name: str, samples: SampleArray) -> tuple[FloatArray, FloatArray]:
        """From a fresh state, word `name`'s base score and its input window (flattened) after
        each chunk of `samples` (for enrolment); the detector is reset afterwards."""
        word = self._word(name)
        self.reset()
        scores, windows = [], []
        for start in range(0, len(samples) - CHUNK_SAMPLES + 1, CHUNK_SAMPLES):
            self._front.push(samples[start : start + CHUNK_SAMPLES])
            self._chunks += 1
            warm = self._chunks > _WARMUP_CHUNKS
            scores.append(word.score(self._front.features) if warm else 0.0)
            windows.append(self._front.features[-word.window :].reshape(-1).copy())
        self.reset()
        return np.asarray(scores, np.float32), np.stack(windows)

    @property
    def verified_words(self) -> list[str]:
        """The words that run with a household verifier."""
        return [w.config.name for w in self._words if w.verifier is not None]

    @property
    def seconds(self) -> float:
        """Seconds of audio processed (whole chunks) since start or `reset()`."""
        return self._chunks * CHUNK_SAMPLES / SAMPLE_RATE

    @property
    def wanted(self) -> int:
        """Samples the chunk being gathered still lacks: `process` runs no model until they
        have come."""
        return CHUNK_SAMPLES - len(self._pending)

    def reset(self) -> None:
        """Forget all audio heard so far, so that nothing from before can fire."""
        self._front.reset()
        self._pending = np.zeros(0, dtype=np.int16)
        self._chunks = 0
        for word in self._words:
            word.last_fired = None
            word.streak = 0
            word.pending_veto = None
            word.last_vetoed = None
            self.last_scores[word.config.name] = 0.0

    def process(self, samples: npt.NDArray[Any]) -> list[Detection]:
        """Feed int16 mono samples of any length; return the detections they complete."""
        if samples.dtype != np.int16 or samples.ndim != 1:
            raise ValueError(
                f"wake-word audio must be a 1-D int16 array, got {samples.dtype} {samples.shape}"
            )
        if len(self._pending):
            samples = np.concatenate((self._pending, samples))
        usable = len(samples) - len(samples) % CHUNK_SAMPLES
        self._pending = samples[usable:].copy()
        detections: list[Detection] = []
        self.vetoed = []
        for start in range(0, usable, CHUNK_SAMPLES):
            detections.extend(self._step(samples[start : start + CHUNK_SAMPLES]))
        return detections

    def _report_veto(self, veto: Detection, verifier: WordVerifier | None) -> None:
        """A run of base scores at the threshold ended without a detection: the verifier
        vetoed what the stock model would have fired on at `veto.t`."""
        self.vetoes += 1
        self.vetoed.append(veto)
        log.info(
            "wake word %s vetoed by the household verifier (score %.3f, verifier %.3f below "
            "its veto %.2f, at %.2f s)",
            veto.word,
            veto.score,
            veto.verifier,
            verifier.veto if verifier is not None else 0.0,
            veto.t,
        )

    def _step(self, chunk: SampleArray) -> list[Detection]:
        self._front.push(chunk)
        self._chunks += 1
        if self._chunks <= _WARMUP_CHUNKS:
            return []  # openWakeWord reports 0 while the start-up noise fills the window
        t = self.seconds
        detections = []
        for word in self._words:
            cfg = word.config
            score = word.score(self._front.features)
            self.last_scores[cfg.name] = score
            self.best_scores[cfg.name] = max(self.best_scores[cfg.name], score)
            # The verifier runs only on proposals (a dot product), so the idle path costs what
            # the three models cost. It adds the near misses it recognises, and vetoes a base
            # score at the threshold only when it is sure that is not the phrase (`veto`).
            verifier = word.verifier
            p = None
            # Not while the start-up noise is still in the window: the verifier learnt real
            # audio only, and would take those made-up embeddings for anything.
            if (
                verifier is not None
                and score >= verifier.base_threshold
                and self._chunks > verifier.window
            ):
                p = verifier.probability(self._front.features)
            # an accepted probability also needs a window like an enrolled saying's
            sim = None
            if verifier is not None and p is not None and p >= verifier.accept:
                if verifier.similar:
                    sim = verifier.similarity(self._front.features)
                near = sim is None or sim >= verifier.similar
                word.streak = word.streak + 1 if near else 0
            else:
                word.streak = 0
            vetoed = (
                score >= cfg.threshold
                and verifier is not None
                and p is not None
                and p < verifier.veto
            )
            accepted = (score >= cfg.threshold and not vetoed) or (
                verifier is not None and word.streak >= verifier.confirm
            )
            # The tolerance keeps float rounding of t from shortening the refractory period.
            ready = word.last_fired is None or t - word.last_fired >= cfg.refractory_s - 1e-9
            if vetoed and not accepted and ready and word.pending_veto is None:
                if word.last_vetoed is None or t - word.last_vetoed >= cfg.refractory_s - 1e-9:
                    word.pending_veto = Detection(cfg.name, score, t, p)
                    word.last_vetoed = t
            elif score < cfg.threshold and word.pending_veto is not None:
                self._report_veto(word.pending_veto, verifier)
                word.pending_veto = None
            if score < cfg.threshold / 2 and p is None:
                continue
            log.debug(
                "%s: score %.3f at %.2f s (threshold %.2f, verifier %s)",
                cfg.name,
                score,
                t,
                cfg.threshold,
                "-" if p is None else f"{p:.3f}",
            )
            if accepted and ready:
                word.pending_veto = None  # the run fired after all: no veto to report
                word.last_fired = t
                detections.append(Detection(cfg.name, score, t, p, sim))
                log.info(
                    "wake word %s (score %.3f, verifier %s, similarity %s, at %.2f s)",
                    cfg.name,
                    score,
                    "-" if p is None else f"{p:.3f}",
                    "-" if sim is None else f"{sim:.3f}",
                    t,
                )
        return detections


def read_audio(path: Path) -> SampleArray:
    """Any audio file PyAV can decode (every WAV encoding) as 16 kHz mono int16; else ValueError."""
    import av
    import soxr

    blocks: list[npt.NDArray[Any]] = []
    try:
        with av.open(str(path)) as container:
            if not container.streams.audio:
                raise ValueError(f"{path}: cannot read audio: the file has no audio stream")
            stream = container.streams.audio[0]
            rate = int(stream.rate)
            # Only the sample format changes here (to planar float); the rate is soxr's job below.
            converter = av.AudioResampler(format="fltp")
            for frame in container.decode(stream):
                blocks.extend(c.to_ndarray() for c in converter.resample(frame))
            blocks.extend(c.to_ndarray() for c in converter.resample(None))
    except (av.FFmpegError, OSError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc)
        raise ValueError(f"{path}: cannot read audio: {reason}") from exc
    if not blocks:
        return np.zeros(0, dtype=np.int16)
    mono = np.concatenate(blocks, axis=1).mean(axis=0, dtype=np.float32)
    if rate != SAMPLE_RATE:
        mono = soxr.resample(mono, rate, SAMPLE_RATE)
    samples: SampleArray = (np.clip(mono, -1.0, 1.0) * 32767).astype(np.int16)
    return samples


def detect_main(argv: list[str]) -> int:
    """`wakertc detect FILE.wav`: print each detection in the file as a JSON line."""
    parser = argparse.ArgumentParser(
        prog="wakertc detect",
        description="Run the configured wake words over an audio file (any rate, any channels) "
        'and print each detection as a JSON line {"word", "score", "t"}; per-word best scores '
        "go to stderr, to help choose thresholds.",
    )
    parser.add_argument("file", type=Path, help="audio file, e.g. a WAV recording")
    parser.add_argument("--config", help="config file (default $WAKERTC_CONFIG or /etc/wakertc)")
    parser.add_argument("--threshold", type=float, help="use this threshold for every word")
    parser.add_argument("--models-dir", type=Path, help="directory with the .tflite models")
    parser.add_argument(
        "--no-verifier", action="store_true", help="ignore the household verifier (stock model)"
    )
    args = parser.parse_args(argv)
    from .config import ConfigError, config_path, load_config

    path = config_path(args.config)
    try:
        wake = load_config(path).wake if args.config or path.is_file() else WakeConfig()
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    if args.models_dir is not None:
        wake = dataclasses.replace(wake, models_dir=args.models_dir)
    if args.threshold is not None:
        if not 0.0 < args.threshold <= 1.0:
            print(f"--threshold {args.threshold}: expected a score in (0, 1]", file=sys.stderr)
            return 2
        words = tuple(dataclasses.replace(w, threshold=args.threshold) for w in wake.words)
        wake = dataclasses.replace(wake, words=words)
    try:
        samples = read_audio(args.file)
    except ValueError as exc:
        print(exc, file=sys.stderr)
        return 2
    verifier = None
    if not args.no_verifier and (args.config or path.is_file()):
        verifier = verifier_file.verifier_path(path)
    try:
        detector = WakeWordDetector(wake, verifier)
    except WakeWordError as exc:
        print(exc, file=sys.stderr)
        return 2
    verified = set(detector.verified_words)
    best = {w.name: (0.0, 0.0) for w in wake.words}
    for start in range(0, len(samples), CHUNK_SAMPLES):
        for detection in detector.process(samples[start : start + CHUNK_SAMPLES]):
            line: dict[str, Any] = {
                "word": detection.word,
                "score": round(detection.score, 4),
                "t": detection.t,
            }
            if detection.word in verified:
                # the base score and what the household verifier made of it, to tune by
                p = detection.verifier
                line["verifier"] = None if p is None else round(p, 4)
                s = detection.similarity
                line["similarity"] = None if s is None else round(s, 4)
                line["by"] = (
                    "base" if detection.score >= detector.threshold(detection.word) else "verifier"
                )
            print(json.dumps(line), flush=True)
        for veto in detector.vetoed:
            print(
                f"{veto.word}: score {veto.score:.4f} at {veto.t:.2f} s vetoed by the household "
                f"verifier ({veto.verifier:.4f})",
                file=sys.stderr,
            )
        for name, score in detector.last_scores.items():
            if score > best[name][0]:
                best[name] = (score, detector.seconds)
    for word in wake.words:
        score, t = best[word.name]
        print(
            f"{word.name}: best score {score:.4f} at {t:.2f} s (threshold {word.threshold})",
            file=sys.stderr,
        )
    return 0
