#!/usr/bin/env python3
"""Gaps in the speaker's sound under CPU and GIL load: the real PyAudio backend's playback thread.

    .venv/bin/python scripts/playback_stress.py [--busy N] [--gil F] [--seconds S] [--runs R]

Plays a 440 Hz tone in phrases (1.4 s loud, 0.2 s at a level no one hears: speech's pauses,
where the playback thread may refill the device) through the daemon's `PyAudioBackend` into the
private PulseAudio rig (scripts/pulserig.py), handed over in 20 ms chunks on the event loop as
network audio is,
while `--busy` processes spin on the CPUs and a Python thread in this process holds the GIL a
fraction `--gil` of the time (in 5 ms switch intervals, as the wake-word loop or a decoder
would). The speaker's monitor is recorded; a gap is a stretch where it is all but silent (the
sink plays zeros when the client's audio is not there). Prints, per run: gaps and the time
lost, the queue's underruns and target, and how the playback thread kept the device
(`device_playback`).

It is a check of the playback thread's margin (audio._RoomPacer keeps one 20 ms period in the
device, a blocking writer two): run it on the device itself, where the scheduler and the GIL
are what they will be in use.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
try:
    import wakertc  # noqa: F401
except ImportError:  # run by a Python without the package: use the project's virtualenv
    VENV_PYTHON = ROOT / ".venv" / "bin" / "python"
    if VENV_PYTHON.exists() and Path(sys.executable) != VENV_PYTHON:
        os.execv(VENV_PYTHON, [str(VENV_PYTHON), *sys.argv])
    raise

import numpy as np  # noqa: E402

from pulserig import SPEAKER_RATE, running_pulse  # noqa: E402
from wakertc.audio import PLAYBACK_RATE, PyAudioBackend  # noqa: E402
from wakertc.config import AudioConfig  # noqa: E402

LEVEL = 0.3 * 32767
PAUSE_LEVEL = 30.0  # a pause between phrases: audible to no one, above a gap's zeros
GAP_LEVEL = 8.0  # a 2.5 ms window whose peak is below this is a gap
PHRASE_S, PAUSE_S = 1.4, 0.2
WINDOW = round(SPEAKER_RATE * 0.0025)  # the envelope's resolution: 2.5 ms


def hold_the_gil(share: float, stop: threading.Event) -> None:
    """Spin in Python for `share` of the time, in runs of 4 ms or more."""
    busy_s = 0.004 * share / max(1e-6, 1 - share)
    while not stop.is_set():
        until = time.perf_counter() + busy_s
        while time.perf_counter() < until:
            sum(range(200))
        time.sleep(0.004)


def gaps_in(recording: Path) -> tuple[int, float, float]:
    """(gaps, ms lost, seconds of tone) in a raw s16le recording of the speaker's monitor."""
    x = np.abs(np.fromfile(recording, np.int16).astype(np.float32))
    envelope = x[: len(x) // WINDOW * WINDOW].reshape(-1, WINDOW).max(axis=1)
    on = np.flatnonzero(envelope > LEVEL / 10)
    if not len(on):
        raise RuntimeError(f"no tone in {recording}")
    low = envelope[on[0] : on[-1] + 1] < GAP_LEVEL
    gaps = int(np.sum(low[1:] & ~low[:-1]))
    return gaps, float(low.sum()) * WINDOW / SPEAKER_RATE * 1000, len(low) * WINDOW / SPEAKER_RATE


async def one_run(busy: int, gil: float, seconds: float, workdir: Path) -> str:
    with running_pulse() as rig:
        os.environ.update(rig.env_vars)
        backend = PyAudioBackend(
            AudioConfig(input_device=rig.input_device, output_device=rig.output_device)
        )
        backend.start(asyncio.get_running_loop(), lambda frame: None)
        recording = workdir / "speaker.raw"
        recorder = await asyncio.create_subprocess_exec(
            "parecord", "--device=speaker.monitor", "--raw", "--format=s16le",
            f"--rate={SPEAKER_RATE}", "--channels=1", str(recording),
            env=rig.env,
        )  # fmt: skip
        spinners = [
            await asyncio.create_subprocess_exec(sys.executable, "-c", "while True: pass")
            for _ in range(busy)
        ]
        stop = threading.Event()
        holder = threading.Thread(target=hold_the_gil, args=(gil, stop), daemon=True)
        if gil:
            holder.start()
        try:
            await asyncio.sleep(0.5)
            chunk = PLAYBACK_RATE // 50
            count = round(seconds * 50)
            t = np.arange(chunk * count) / PLAYBACK_RATE
            phrase = (t % (PHRASE_S + PAUSE_S)) < PHRASE_S
            tone = (np.where(phrase, LEVEL, PAUSE_LEVEL) * np.sin(2 * np.pi * 440 * t)).astype(
                np.int16
            )
            t0 = time.monotonic()
            for k in range(count):
                await asyncio.sleep(max(0.0, t0 + k * 0.02 - time.monotonic()))
                backend.play(tone[k * chunk : (k + 1) * chunk])
            await asyncio.sleep(1.0)
        finally:
            stop.set()
            for spinner in spinners:
                spinner.kill()
                await spinner.wait()
            recorder.terminate()
            await recorder.wait()
            device = getattr(backend, "device_playback", "not reported by this version")
            queue = (backend.playback_underruns, backend.playback_target_s)
            backend.close()
    gaps, lost_ms, tone_s = gaps_in(recording)
    return (
        f"busy={busy} gil={gil:.2f}: {tone_s:.2f} s of tone, {gaps} gaps, {lost_ms:.0f} ms lost; "
        f"queue: {queue[0]} underruns, target {queue[1] * 1000:.0f} ms; device: {device}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--busy", type=int, default=2, help="processes spinning (default 2)")
    parser.add_argument("--gil", type=float, default=0.5, help="share of time the GIL is held")
    parser.add_argument("--seconds", type=float, default=20.0, help="tone length (default 20)")
    parser.add_argument("--runs", type=int, default=1)
    args = parser.parse_args(argv)
    if not 0 <= args.gil < 1:
        parser.error(f"--gil must be in [0, 1), got {args.gil}")
    for _ in range(args.runs):
        with tempfile.TemporaryDirectory(prefix="wakertc-playback-stress-") as tmp:
            print(asyncio.run(one_run(args.busy, args.gil, args.seconds, Path(tmp))), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
