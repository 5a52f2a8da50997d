"""`wakertc demo`: the replies it counts (`turns`), and a recording without the wake word, which
ends soon after the input with the best score the word reached."""

from __future__ import annotations

import asyncio
import io
import json
import os
import re
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from wakertc.config import WakeConfig
from wakertc.demo import RATE, espeak, run_demo
from wakertc.measure import write_wav
from wakertc.wakeword import WakeWordDetector, read_audio

ENV = {**os.environ, "WAKERTC_LOG_TARGET": "stderr"}


def silence(seconds: float) -> np.ndarray:
    return np.zeros(int(seconds * RATE), np.float32)


@pytest.mark.parametrize("api", ["realtime", "live"])
async def test_demo_json_counts_two_turns(tmp_path: Path, models_dir: Path, api: str) -> None:
    """The wake word and a question, then a second question once the first reply (a 0.8 s tone)
    has played and before the 2 s idle timeout: `wakertc demo --json` reports two turns."""
    said = np.concatenate(
        [
            silence(0.5),
            espeak("hey jarvis"),
            espeak("what is the weather like today"),
            # The server waits 0.5 s of silence, replies for 0.8 s: the second question comes
            # ~0.9 s after the reply ended and ~1.1 s before the conversation would idle out.
            silence(2.2),
            espeak("and what about tomorrow"),
            silence(1.0),
        ]
    )
    wav = tmp_path / "two-questions.wav"
    write_wav(wav, said, RATE)
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "wakertc.cli",
        "demo",
        "--json",
        "--reply",
        "tone",
        "--wav",
        str(wav),
        "--out",
        str(tmp_path / "reply.wav"),
        "--models-dir",
        str(models_dir),
        "--timeout",
        "40",
        "--api",
        api,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=ENV,
    )
    out, err = await asyncio.wait_for(process.communicate(), 90)
    assert process.returncode == 0, (out, err)
    summary = json.loads(out.decode().splitlines()[-1])
    assert summary["ok"] is True, summary
    assert summary["turns"] == 2, summary
    assert summary["states"].count("speaking") == 2, summary["states"]


async def test_demo_without_the_wake_word_ends_soon_and_says_how_close(
    tmp_path: Path, models_dir: Path
) -> None:
    """A recording of a near miss ("hey travis" scores about 0.27): the demo ends within 5 s of the
    input's end (not at its timeout) with ok false, no turns, and an error naming the word, the
    best score the daemon's detector gave it (as computed here over the same audio, not its last
    score, which is ~0 by then) and the threshold."""
    said = np.concatenate([silence(0.5), espeak("hey travis"), silence(1.0)])
    wav = tmp_path / "near-miss.wav"
    write_wav(wav, said, RATE)
    duration_s = len(said) / RATE
    terminal = io.StringIO()
    called = time.time()
    result = await run_demo(
        input_wav=wav,
        output_wav=tmp_path / "reply.wav",
        faults=[],
        models_dir=models_dir,
        workdir=tmp_path,
        timeout_s=30,
        stream=terminal,
    )
    returned = time.time()
    summary = result.as_json()
    assert summary["ok"] is False
    assert summary["turns"] == 0
    assert summary["wake_word"] is None
    assert summary["states"] == ["starting", "idle"], summary
    (error,) = summary["errors"]
    found = re.fullmatch(
        r"no wake word heard in near-miss\.wav \(\d+\.\d s\): "
        r"best score (\d\.\d{4}) for hey_jarvis \(threshold 0\.5\)",
        error,
    )
    assert found, error
    # Not bit-identical: the file backend converts the samples on their way to the detector.
    assert float(found.group(1)) == pytest.approx(best_score(wav, models_dir), abs=0.01)
    assert 0.05 < float(found.group(1)) < 0.5
    # The first line is the daemon listening (its audio has started), in seconds after the demo
    # started it, which was after `called`: so the input ended no earlier than this.
    idle = re.match(r"\[\s*(\d+\.\d+) s\].*starting -> idle", terminal.getvalue())
    assert idle, terminal.getvalue()
    input_ended_by = called + float(idle.group(1)) + duration_s
    assert returned - input_ended_by < 5.0, (returned - input_ended_by, terminal.getvalue())


def best_score(wav: Path, models_dir: Path) -> float:
    """The highest score hey_jarvis reaches over the file (and 1 s of silence after it), chunk by
    chunk as the daemon feeds its detector."""
    detector = WakeWordDetector(WakeConfig(models_dir=models_dir))
    samples = np.concatenate([read_audio(wav), np.zeros(RATE, np.int16)])
    best = 0.0
    for start in range(0, len(samples), 320):
        detector.process(samples[start : start + 320])
        best = max(best, detector.last_scores["hey_jarvis"])
    return best
