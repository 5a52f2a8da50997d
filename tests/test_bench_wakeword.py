"""scripts/bench_wakeword.py on a tiny set: real espeak-ng speech, real models, both engines.

The full measurement takes minutes; here two wake phrases and ~40 s of non-wake speech in pink
noise check the figures' shape and what they mean: both engines detect the phrases, neither fires
on the negatives, and the two score the same audio the same way (they are meant to be bit-exact).
"""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))

import bench_wakeword as bw  # noqa: E402

MODELS = ROOT / "models"
TINY = bw.Plan(
    "tiny",
    positives=(("en-us+f2", 130, "hey jarvis"), ("en-us+f2", 190, "hey jarvis, what time is it")),
    negative_speech_s=5.0,  # one whole segment: a paragraph read in ~30 s
    noise_stretch_s=(3.0, 3.0),
)
FIGURE_KEYS = {"value", "unit", "reference", "reference_name", "ratio", "target", "met"}


@pytest.fixture(scope="module")
def result(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    messages: list[str] = []
    figures = bw.run(TINY, tmp_path_factory.mktemp("wakeword"), MODELS, messages.append)
    assert any("false accepts" in m for m in messages), messages
    return figures


def test_figures_have_the_bench_shape(result: dict[str, Any]) -> None:
    assert set(result) == {"wake_word_detection_rate", "wake_word_false_accepts_per_hour"}
    for name, fig in result.items():
        assert set(fig) >= FIGURE_KEYS, name
        for key in ("value", "reference", "ratio"):
            assert isinstance(fig[key], float) and math.isfinite(fig[key]), (name, key)
        assert isinstance(fig["met"], bool) and isinstance(fig["target"], str), name
        assert "stock openwakeword" in fig["reference_name"]
        assert fig["threshold"] == 0.5 and fig["snr_db"] == 10.0 and "pink" in fig["noise"]
        assert fig["engine_cpu_s"]["wakertc"] > 0 and fig["engine_cpu_s"]["stock"] > 0
    rate = result["wake_word_detection_rate"]
    assert rate["ratio"] == pytest.approx(rate["value"] / rate["reference"], rel=1e-3)


def test_both_engines_detect_the_wake_phrases(result: dict[str, Any]) -> None:
    rate = result["wake_word_detection_rate"]
    assert rate["positives"] == 2
    assert rate["detected"] == {"wakertc": 2, "stock": 2}
    assert rate["value"] == rate["reference"] == 1.0 and rate["met"] is True
    assert rate["by_speed_wpm"] == {
        "130": {"n": 1, "wakertc": 1, "stock": 1},
        "190": {"n": 1, "wakertc": 1, "stock": 1},
    }
    assert rate["missed"] == []
    assert rate["fired_in_lead_in_noise"] == {"wakertc": 0, "stock": 0}


def test_non_wake_speech_and_noise_fire_neither_engine(result: dict[str, Any]) -> None:
    fa = result["wake_word_false_accepts_per_hour"]
    assert fa["false_accepts"] == {"wakertc": 0, "stock": 0}
    assert fa["value"] == fa["reference"] == 0.0 and fa["met"] is True
    assert fa["ratio"] == 1.0  # (0 + 1) / (0 + 1)
    assert fa["speech_segments"] == 1 and fa["noise_only_min"] == pytest.approx(0.05, abs=0.01)
    minutes = fa["negative_speech_min"] + fa["noise_only_min"]
    assert fa["negative_hours"] * 60 == pytest.approx(minutes, abs=0.1)
    assert 0 <= fa["max_negative_score"]["wakertc"] < 0.5


def test_the_engines_score_the_same_audio_the_same(result: dict[str, Any]) -> None:
    for fig in result.values():
        agreement = fig["agreement"]
        assert agreement["max_score_difference"] <= 1e-4
        assert agreement["same_detections"] is True
        chunks = agreement["chunks_scored"]
        assert chunks["wakertc"] == chunks["stock"]
        assert chunks["wakertc"] == pytest.approx(fig["audio_s"] * 16000 / 1280, abs=2)


def test_mix_puts_speech_10_db_above_pink_noise(tmp_path: Path) -> None:
    speech = bw.Speech(tmp_path).get("hey jarvis", "en-gb", 160)
    mixed, onset = bw.mix(speech, 2.0, 1.5, -28.0, 10.0, np.random.default_rng(7))
    # The same seed with silent "speech" gives exactly the noise that was added.
    noise, _ = bw.mix(np.zeros_like(speech), 2.0, 1.5, -28.0, 10.0, np.random.default_rng(7))
    assert len(mixed) == len(noise) and len(mixed) % 1280 == 0
    assert 2.0 * 16000 <= onset < 2.0 * 16000 + len(speech)
    assert mixed[: 2 * 16000].any()  # noise in the lead-in, not silence

    voice = (mixed.astype(np.float64) - noise)[2 * 16000 : 2 * 16000 + len(speech)]
    noise_power = float(np.mean(noise.astype(np.float64) ** 2))
    assert 10 * math.log10(bw.active_power(voice) / noise_power) == pytest.approx(10.0, abs=0.1)
    assert 10 * math.log10(bw.active_power(voice) / 32768**2) == pytest.approx(-28.0, abs=0.1)

    # Pink: equal power per octave (white noise would give 3 dB more per octave up).
    spectrum = np.abs(np.fft.rfft(noise.astype(np.float64))) ** 2
    freqs = np.fft.rfftfreq(len(noise), 1 / 16000)

    def band(low: float) -> float:
        return float(spectrum[(freqs >= low) & (freqs < 2 * low)].sum())

    assert 10 * math.log10(band(200) / band(1600)) == pytest.approx(0.0, abs=1.0)
    assert band(20) < band(200) / 10  # nothing below 50 Hz


def test_fire_times_follow_the_detectors_refractory_rule() -> None:
    scores = np.zeros(60)
    scores[[3, 4, 5]] = 0.9  # one burst: fires once
    scores[27] = 0.6  # 24 chunks (1.92 s) after the detection: still refractory
    scores[28] = 0.5  # 25 chunks (2.0 s) after: fires, at exactly the threshold
    scores[40] = 0.49  # below the threshold
    assert bw.fire_times(scores, 0.5, 2.0) == [3, 28]
