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

from wakertc.demo import RATE, espeak, run_demo
from wakertc.measure import write_wav

ENV = {**os.environ, "WAKERTC_LOG_TARGET": "stderr"}


def silence(seconds: float) -> np.ndarray:
    return np.zeros(int(seconds * RATE), np.float32)


async def test_demo_json_counts_two_turns(tmp_path: Path, models_dir: Path) -> None:
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
    """A recording with speech but no wake word: the demo ends within 5 s of the input's end
    (not at its timeout) with ok false, no turns, and an error naming the word, its best score
    and the threshold."""
    wav = tmp_path / "no-wake.wav"
    write_wav(
        wav,
        np.concatenate([silence(0.5), espeak("what is the weather like today"), silence(1.0)]),
        RATE,
    )
    duration = len(np.concatenate([silence(0.5), espeak("what is the weather like today")]))
    duration_s = duration / RATE + 1.0
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
        r"no wake word heard in no-wake\.wav \(\d+\.\d s\): "
        r"best score (\d\.\d{3}) for hey_jarvis \(threshold 0\.5\)",
        error,
    )
    assert found, error
    assert float(found.group(1)) < 0.5
    # The first line is the daemon listening (its audio has started), in seconds after the demo
    # started it, which was after `called`: so the input ended no earlier than this.
    idle = re.match(r"\[\s*(\d+\.\d+) s\].*starting -> idle", terminal.getvalue())
    assert idle, terminal.getvalue()
    input_ended_by = called + float(idle.group(1)) + duration_s
    assert returned - input_ended_by < 5.0, (returned - input_ended_by, terminal.getvalue())
