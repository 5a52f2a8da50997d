"""Reference process for scripts/bench.py: the stock openWakeWord package, predicting in real time.

    python scripts/bench_oww.py WAV MODELS_DIR SECONDS [WORD]

Loads `openwakeword.Model` on the TFLite models in MODELS_DIR (on ai_edge_litert, as wakertc:
scripts/stock_oww.py), prints `ready`, waits for a `go` line on stdin, then feeds the first SECONDS
of WAV (16 kHz mono int16) to `Model.predict` in 80 ms chunks paced in real time, as a bare
always-on loop would receive them from a microphone.
It then prints one JSON line (`chunks`, `late`, `max_score`) and waits for stdin to close, so the
parent can read this process's CPU time and memory from /proc at the points it chooses.
"""

from __future__ import annotations

import json
import sys
import time
import wave
from pathlib import Path

import numpy as np

CHUNK = 1280  # 80 ms at 16 kHz: openWakeWord's step
CHUNK_S = CHUNK / 16000


def main(argv: list[str]) -> int:
    """Run the paced predict loop; the protocol is in the module docstring."""
    wav_path, models_dir, seconds = Path(argv[0]), Path(argv[1]), float(argv[2])
    word = argv[3] if len(argv) > 3 else "hey_jarvis"
    with wave.open(str(wav_path), "rb") as wav:
        if (wav.getframerate(), wav.getnchannels(), wav.getsampwidth()) != (16000, 1, 2):
            print(f"{wav_path}: need 16 kHz mono 16-bit", file=sys.stderr)
            return 2
        audio = np.frombuffer(wav.readframes(int(seconds * 16000)), dtype=np.int16)

    from stock_oww import stock_model  # the reference on wakertc's interpreter (see there)

    model = stock_model(models_dir, [word])
    print("ready", flush=True)
    if sys.stdin.readline().strip() != "go":
        return 1

    chunks = [audio[i : i + CHUNK] for i in range(0, len(audio) - CHUNK + 1, CHUNK)]
    late = 0
    best = 0.0
    start = time.monotonic()
    for n, chunk in enumerate(chunks):
        # Chunk n is complete at the microphone (n + 1) * 80 ms after the start.
        wait = start + (n + 1) * CHUNK_S - time.monotonic()
        if wait > 0:
            time.sleep(wait)
        else:
            late += 1
        scores = model.predict(chunk)
        best = max(best, *(float(v) for v in scores.values()))
    print(json.dumps({"chunks": len(chunks), "late": late, "max_score": best}), flush=True)
    sys.stdin.read()  # the parent reads /proc, then closes our stdin
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
