#!/usr/bin/env python3
"""wakertc benchmarks: each figure beside a reference measured in the same run.

    .venv/bin/python scripts/bench.py [--quick] [--json] [--sessions N]

Progress goes to stderr; with --json one JSON object goes to stdout. Figures:

- `start_to_ready_s`: spawn of `wakertc run` (file backend) to READY=1 on a real NOTIFY_SOCKET,
  median of several starts; reference: spawn to a constructed stock `openwakeword.Model`.
- `idle_rss_mb`: VmRSS of that daemon listening to a noise floor, read `settle_s` (5 s, the same
  in the quick and the full run) after its READY=1, before the CPU window; reference: the stock
  package's predict-loop process. The reading at the end of the CPU window is in the details.
- `idle_cpu_s_per_min`: the daemon's utime+stime per minute of listening, over the same wall-clock
  window as the stock `Model.predict` loop fed the same audio in real time (the reference).
- `rss_after_first_conversation_mb`, `idle_rss_after_n_conversations_mb`: the same daemon
  listening again after 1 and after N real "hey jarvis, what time is it" conversations (N = 3
  quick, 200 full: one every 5 s, ~17 minutes of the full run; reference: its idle RSS before the
  first).
- `wake_to_live_ms`: wake-word detection to `session.updated` in that daemon process (its
  "session live" log line), against the emulator and companion on loopback; reference: two bare
  aiortc peers on loopback connecting and round-tripping a data-channel message, run between the
  conversations so both see the same machine load. `wake_to_live_in_process_ms`: the same via
  `Daemon.start_conversation()` (the button's path) in this process, alternating with the
  reference. Both also show the bare handshake with an audio track each way, for diagnosis.
- `wake_to_live_gpt_live_ms`: the same under GPT-Live (`[session] api = "live"`): wake-word
  detection to `session.started` in a second `wakertc run` process, its offer relayed by the
  companion to the emulator; reference: a bare aiortc peer taking the same path (the relay POST,
  the answer, `session.started`), run between its conversations. Beside Realtime's p50, with the
  ratio of the two.
- `utterance_received_ratio`: `wakertc.demo.run_demo` (the wake phrase and a question in one
  breath); the share of the question the emulator recorded. Reference: all of it (1.0).
- `mic_to_wire_ms`, `wire_to_speaker_ms` (scripts/bench_latency.py): clicks through the real
  daemon's PyAudio backend on a private PulseAudio server and the echo emulator, timed at the
  sinks' monitors and at the emulator's peer connection; beside bare PortAudio streams on the same
  devices. Skipped (met: null, with the reason) where PulseAudio cannot start. Wire to speaker's
  target is the bare writer's p50 + 25 ms.
- `jitter_underruns_per_min`, `jitter_depth_recovery_ms` (scripts/bench_jitter.py): spoken
  replies through the whole chain in this process under the emulator's `jitter` fault (30 ms
  +- 20 ms, 1 % loss): the playback queue's underruns per minute of reply audio (reference: the
  clean path), and its depth 5-6 s after a path that was jittery turned clean (reference: its
  depth on the clean path).
- `wake_word_detection_rate`, `wake_word_false_accepts_per_hour` (scripts/bench_wakeword.py):
  espeak-ng voices and speeds in pink noise at 10 dB SNR, and 30+ minutes of other speech, through
  wakertc's detector and the stock openwakeword package on the same audio.

Figures are medians or percentiles because this machine is shared: other processes compete for its
two cores, so single samples are noisy. `--quick` (~2.5 min) uses fewer samples than the full run
(~26 min).
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import logging
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
try:
    import wakertc  # noqa: F401
except ImportError:  # run by a Python without the package: use the project's virtualenv
    VENV_PYTHON = ROOT / ".venv" / "bin" / "python"
    if VENV_PYTHON.exists() and Path(sys.executable) != VENV_PYTHON:
        os.execv(VENV_PYTHON, [str(VENV_PYTHON), *sys.argv])
    raise

import numpy as np  # noqa: E402

from bench_jitter import measure as measure_jitter  # noqa: E402
from bench_latency import measure as measure_audio_latency  # noqa: E402
from bench_live import (  # noqa: E402
    LiveSessions,
    Stack,
    aiortc_round_trip,
    live_relay_round_trip,
    make_idle_input,
    write_daemon_config,
)
from bench_procs import (  # noqa: E402
    DaemonProcess,
    ReferenceProcess,
    cpu_s,
    rss_mb,
    rss_parts_mb,
    venv_bin,
)
from bench_report import figure, p50_p90  # noqa: E402
from bench_wakeword import measure as measure_wake_word  # noqa: E402
from wakertc.demo import run_demo  # noqa: E402
from wakertc.measure import write_wav  # noqa: E402

IDLE_RSS_LIMIT_MB = 110.0
# Listening again after conversations: WebRTC and the echo canceller stay loaded.
CONVERSATION_RSS_LIMIT_MB = 120.0
READY_LIMIT_S = 1.5
IDLE_CPU_LIMIT_RATIO = 1.0
WAKE_TO_LIVE_LIMIT_RATIO = 1.5
UTTERANCE_LIMIT = 0.95
# Conversations in the daemon process end this long after the reply (emulator: a 0.8 s tone).
IDLE_TIMEOUT_S = 0.5


@dataclass(frozen=True)
class Plan:
    """How many samples of each kind a run takes."""

    name: str
    ready_runs: int
    settle_s: float  # after READY: idle RSS is read then, and the idle window starts
    idle_window_s: float
    conversations: int  # wake phrases said to the `wakertc run` process
    cycle_s: float  # one wake phrase every cycle_s seconds of microphone audio
    live_sessions: int
    demos: int
    gpt_live_conversations: int  # wake phrases said to the `wakertc run` process under GPT-Live


QUICK = Plan(
    name="quick",
    ready_runs=3,
    settle_s=5.0,
    idle_window_s=6.0,
    conversations=3,
    cycle_s=5.0,
    live_sessions=8,
    demos=1,
    gpt_live_conversations=3,
)
FULL = Plan(
    name="full",
    ready_runs=7,
    settle_s=5.0,
    idle_window_s=60.0,
    conversations=200,
    cycle_s=5.0,
    live_sessions=30,
    demos=3,
    gpt_live_conversations=20,
)


class Progress:
    """Timestamped progress lines on stderr."""

    def __init__(self) -> None:
        self.started = time.monotonic()

    def __call__(self, message: str) -> None:
        print(f"[bench {time.monotonic() - self.started:6.1f} s] {message}", file=sys.stderr)

    @property
    def elapsed(self) -> float:
        """Seconds since the bench started."""
        return time.monotonic() - self.started


async def daemon_process_figures(
    plan: Plan, stack: Stack, workdir: Path, models_dir: Path, say: Progress
) -> dict[str, dict[str, Any]]:
    """READY, idle RSS and CPU, then real conversations: the `wakertc run` process."""
    # The wake phrases start after the idle window, with a margin for the reference's start.
    idle_s = plan.settle_s + plan.idle_window_s + 2.0
    wav = workdir / "mic.wav"
    make_idle_input(wav, idle_s, plan.conversations, plan.cycle_s)
    config = write_daemon_config(
        workdir / "wakertc.toml",
        stack,
        input_wav=wav,
        output_wav=workdir / "speaker.wav",
        models_dir=models_dir,
        idle_timeout_s=IDLE_TIMEOUT_S,
    )
    wakertc = venv_bin("wakertc")
    ready: list[float] = []
    stops: list[float] = []
    for run in range(plan.ready_runs - 1):
        daemon = DaemonProcess(wakertc, config, workdir / f"notify-{run}")
        ready.append(await daemon.start())
        stops.append(await daemon.stop())
        say(f"start {run + 1}: READY=1 after {ready[-1]:.3f} s, stopped in {stops[-1]:.2f} s")

    # Loaded before the last daemon starts, so its import does not compete with that start.
    reference = ReferenceProcess(
        Path(sys.executable), wav, models_dir, plan.idle_window_s, workdir / "oww.log"
    )
    reference_start = await reference.start()
    say(f"stock openwakeword Model ready {reference_start:.2f} s after spawn")

    daemon = DaemonProcess(wakertc, config, workdir / "notify-final")
    ready.append(await daemon.start())
    say(f"start {plan.ready_runs}: READY=1 after {ready[-1]:.3f} s; listening")
    try:
        try:
            idle = await idle_window(plan, daemon, reference, say)
        finally:
            await reference.stop()
        audio_started = daemon.spawned_at + ready[-1]
        talk = await conversations(plan, daemon, audio_started + idle_s, say)
    finally:
        stops.append(await daemon.stop())
    log_copy = os.environ.get("WAKERTC_BENCH_LOG")  # for looking into a surprising figure
    if log_copy:
        await asyncio.to_thread(Path(log_copy).write_text, "\n".join(daemon.log) + "\n")

    idle_rss = idle["rss"]
    figures = {
        "start_to_ready_s": figure(
            statistics.median(ready),
            reference_start,
            unit="s",
            reference_name="spawn to a constructed stock openwakeword.Model (tflite)",
            target=f"<= {READY_LIMIT_S} s",
            met=statistics.median(ready) <= READY_LIMIT_S,
            samples=[round(s, 3) for s in ready],
            stop_s_max=round(max(stops), 3),
        ),
        "idle_rss_mb": figure(
            idle_rss,
            idle["reference_rss"],
            unit="MB",
            reference_name="stock openwakeword predict-loop process",
            target=f"<= {IDLE_RSS_LIMIT_MB:g} MB",
            met=idle_rss <= IDLE_RSS_LIMIT_MB,
            read_after_ready_s=plan.settle_s,
            rss_after_cpu_window_mb=round(idle["rss_after_window"], 1),
            listened_s=round(idle["listened"], 1),
            resident_mb=resident(idle["rss_parts"]),
        ),
        "idle_cpu_s_per_min": figure(
            idle["cpu_per_min"],
            idle["reference_cpu_per_min"],
            unit="CPU s per minute of listening",
            reference_name="stock openwakeword Model.predict loop, same audio, real time",
            target=f"ratio <= {IDLE_CPU_LIMIT_RATIO}",
            met=idle["cpu_per_min"] <= IDLE_CPU_LIMIT_RATIO * idle["reference_cpu_per_min"],
            window_s=round(idle["window"], 2),
            reference_late_chunks=idle["late"],
        ),
    }
    for name, value, n, parts in (
        ("rss_after_first_conversation_mb", talk["rss"][0], 1, talk["rss_parts"][0]),
        (
            "idle_rss_after_n_conversations_mb",
            talk["rss_final"],
            len(talk["rss"]),
            talk["rss_parts"][1],
        ),
    ):
        figures[name] = figure(
            value,
            idle_rss,
            unit="MB",
            reference_name="the same daemon's idle RSS before its first conversation",
            target=f"<= {CONVERSATION_RSS_LIMIT_MB:g} MB",
            met=value <= CONVERSATION_RSS_LIMIT_MB,
            n=n,
            resident_mb=resident(parts),
        )
    figures["idle_rss_after_n_conversations_mb"].update(
        growth_since_first_mb=round(talk["rss_final"] - talk["rss"][0], 2),
        rss_after_each_mb=[round(r, 1) for r in talk["rss"]],
        missed_wake_phrases=talk["missed"],
    )
    figures["wake_to_live_ms"] = latency_figure(
        daemon.wake_to_live_ms,
        talk["reference_ms"],
        talk["with_audio_ms"],
        how="real wake-word detections in the `wakertc run` process ('session live' log); "
        "the first one after start included",
        api="realtime",
        first_ms=daemon.wake_to_live_ms[0],
    )
    return figures


async def gpt_live_figure(
    plan: Plan,
    stack: Stack,
    workdir: Path,
    models_dir: Path,
    realtime: dict[str, Any],
    say: Progress,
) -> dict[str, Any]:
    """Wake-to-live under GPT-Live: a second `wakertc run` process hearing real wake phrases,
    each conversation followed by the bare relay reference; beside Realtime's figure."""
    idle_s = plan.settle_s + 2.0
    wav = workdir / "mic-gpt-live.wav"
    make_idle_input(wav, idle_s, plan.gpt_live_conversations, plan.cycle_s)
    config = write_daemon_config(
        workdir / "wakertc-gpt-live.toml",
        stack,
        input_wav=wav,
        output_wav=workdir / "speaker-gpt-live.wav",
        models_dir=models_dir,
        idle_timeout_s=IDLE_TIMEOUT_S,
        api="live",
    )
    # The first Live session through the stack is ~0.4 s slower than the next (one-time work in
    # the emulator and companion, not the device's): one bare session goes first, uncounted.
    await live_relay_round_trip(stack)
    daemon = DaemonProcess(venv_bin("wakertc"), config, workdir / "notify-gpt-live")
    ready = await daemon.start()
    say(f"GPT-Live daemon: READY=1 after {ready:.3f} s; listening")
    try:
        talk = await conversations(
            replace(plan, conversations=plan.gpt_live_conversations),
            daemon,
            daemon.spawned_at + ready + idle_s,
            say,
            reference=lambda: live_relay_round_trip(stack),
            label="GPT-Live conversation",
        )
    finally:
        await daemon.stop()
    if not daemon.wake_to_live_ms:
        raise RuntimeError("the GPT-Live daemon's conversations never went live")
    p50 = p50_p90(daemon.wake_to_live_ms)[0]
    return latency_figure(
        daemon.wake_to_live_ms,
        talk["reference_ms"],
        talk["with_audio_ms"],
        reference_name="bare aiortc peer: offer -> companion relay -> emulator, to "
        "session.started (p50)",
        how="real wake-word detections in a `wakertc run` process with [session] api = 'live' "
        "('session live' log, at session.started); the first one after start included",
        api="live",
        first_ms=daemon.wake_to_live_ms[0],
        realtime_p50=realtime["p50"],
        ratio_to_realtime=round(p50 / realtime["p50"], 4),
    )


def resident(parts: dict[str, float]) -> dict[str, float]:
    """A reading's split (bench_procs.rss_parts_mb), for the report: most of the file-backed
    part is shared library code, which the kernel can drop and read again; the anonymous part
    is the process's own."""
    return {k: round(parts[k], 1) for k in ("anonymous", "file_backed", "shmem")}


async def idle_window(
    plan: Plan, daemon: DaemonProcess, reference: ReferenceProcess, say: Progress
) -> dict[str, float]:
    """The daemon's idle RSS once start-up has settled (`settle_s` after READY in every plan),
    then CPU of the daemon and the stock loop over the same wall-clock window, then both RSS."""
    await asyncio.sleep(daemon.spawned_at + daemon.ready_s + plan.settle_s - time.monotonic())
    idle_parts = rss_parts_mb(daemon.pid)
    idle_rss = idle_parts["total"]
    daemon_cpu = cpu_s(daemon.pid)
    started = time.monotonic()
    await reference.go()
    reference_cpu = cpu_s(reference.pid)
    summary = await reference.result(plan.idle_window_s + 30.0)
    window = time.monotonic() - started
    daemon_cpu = cpu_s(daemon.pid) - daemon_cpu
    reference_cpu = cpu_s(reference.pid) - reference_cpu
    rss_after_window, reference_rss = rss_mb(daemon.pid), rss_mb(reference.pid)
    if daemon.notify.matching("STATUS=wake"):
        raise RuntimeError("the daemon woke during the idle window: its figures would be off")
    say(
        f"idle: daemon {idle_rss:.1f} MB {plan.settle_s:g} s after READY=1; "
        f"window {window:.1f} s: daemon {daemon_cpu:.2f} CPU s, then {rss_after_window:.1f} MB; "
        f"stock loop {reference_cpu:.2f} CPU s, {reference_rss:.1f} MB "
        f"(max score {summary.get('max_score', 0):.3f})"
    )
    return {
        "window": window,
        "cpu_per_min": daemon_cpu * 60 / window,
        "reference_cpu_per_min": reference_cpu * 60 / window,
        "rss": idle_rss,
        "rss_parts": idle_parts,
        "rss_after_window": rss_after_window,
        "reference_rss": reference_rss,
        "listened": time.monotonic() - daemon.spawned_at,
        "late": float(summary.get("late", 0)),
    }


async def conversations(
    plan: Plan,
    daemon: DaemonProcess,
    first_phrase_at: float,
    say: Progress,
    reference: Callable[[], Awaitable[float]] = aiortc_round_trip,
    label: str = "conversation",
) -> dict[str, Any]:
    """Wait for each wake phrase's conversation; RSS after each, then the `reference` (seconds)
    and the bare pair with audio."""
    prefix = "STATUS=idle: conversation over"
    rss: list[float] = []
    first_parts: dict[str, float] = {}
    reference_ms: list[float] = []
    with_audio_ms: list[float] = []
    missed = 0
    for k in range(plan.conversations):
        deadline = first_phrase_at + (k + 1) * plan.cycle_s + 5.0
        try:
            await daemon.notify.wait_for(prefix, len(rss) + 1, max(deadline - time.monotonic(), 1))
        except TimeoutError:
            missed += 1
            say(f"wake phrase {k + 1}: no complete conversation")
            continue
        parts = rss_parts_mb(daemon.pid)
        rss.append(parts["total"])
        first_parts = first_parts or parts
        # The reference runs while the daemon listens again, under the same machine load.
        await asyncio.sleep(0.3)  # the emulator's side of the call finishes closing
        reference_ms.append(await reference() * 1000)
        with_audio_ms.append(await aiortc_round_trip(audio=True) * 1000)
        done = len(rss)
        if done == 1 or done % 10 == 0 or k + 1 == plan.conversations:
            say(f"{label} {done}/{plan.conversations} over; RSS {rss[-1]:.1f} MB")
    if not rss:
        raise RuntimeError(f"none of the {plan.conversations} wake phrases led to a conversation")
    await asyncio.sleep(2.0)  # listening again, nothing said
    final_parts = rss_parts_mb(daemon.pid)
    return {
        "rss": rss,
        "rss_final": final_parts["total"],
        "rss_parts": (first_parts, final_parts),
        "reference_ms": reference_ms,
        "with_audio_ms": with_audio_ms,
        "missed": missed,
    }


async def in_process_sessions(
    plan: Plan, stack: Stack, workdir: Path, models_dir: Path, say: Progress
) -> tuple[list[float], list[float], list[float]]:
    """Bare aiortc round trips (without, with audio) alternating with in-process conversations."""
    silence = workdir / "silence.wav"
    write_wav(silence, np.zeros(16000, np.int16), 16000)
    config = write_daemon_config(
        workdir / "live.toml",
        stack,
        input_wav=silence,
        output_wav=workdir / "live-speaker.wav",
        models_dir=models_dir,
        idle_timeout_s=0.3,
    )
    live = LiveSessions(config)
    await live.start()
    reference: list[float] = []
    with_audio: list[float] = []
    daemon: list[float] = []
    try:
        for n in range(plan.live_sessions):
            reference.append(await aiortc_round_trip() * 1000)
            with_audio.append(await aiortc_round_trip(audio=True) * 1000)
            await asyncio.sleep(0.1)  # let the peers' closing tasks finish before the next one
            daemon.append(await live.converse() * 1000)
            await asyncio.sleep(0.1)
            if (n + 1) % 10 == 0 or n + 1 == plan.live_sessions:
                say(f"{n + 1}/{plan.live_sessions} sessions and bare round trips")
    finally:
        await live.stop()
    return daemon, reference, with_audio


async def utterance_figure(plan: Plan, workdir: Path, models_dir: Path, say: Progress) -> Any:
    """`run_demo` a few times: the share of the speech after the wake word that was received."""
    ratios: list[float] = []
    wake_ms: list[float] = []
    for n in range(plan.demos):
        demo_dir = workdir / f"demo-{n}"
        demo_dir.mkdir()
        result = await run_demo(
            input_wav=None,
            output_wav=demo_dir / "reply.wav",
            faults=[],
            models_dir=models_dir,
            workdir=demo_dir,
            reply="tone",
            timeout_s=40.0,
            stream=io.StringIO(),
        )
        if not result.ok or result.utterance_received_ratio is None:
            raise RuntimeError(f"demo {n + 1} failed: {result.as_json()}")
        ratios.append(result.utterance_received_ratio)
        if result.wake_to_live_ms is not None:
            wake_ms.append(result.wake_to_live_ms)
        say(f"demo {n + 1}/{plan.demos}: utterance received {ratios[-1]:.3f}")
    return figure(
        min(ratios),
        1.0,
        unit="share of the speech after the wake word",
        reference_name="all of it (ideal)",
        target=f">= {UTTERANCE_LIMIT}",
        met=min(ratios) >= UTTERANCE_LIMIT,
        min=min(ratios),
        mean=round(statistics.mean(ratios), 4),
        n=len(ratios),
        samples=ratios,
        demo_wake_to_live_ms=wake_ms,
    )


def latency_figure(
    samples: list[float],
    reference: list[float],
    with_audio: list[float],
    reference_name: str = "bare aiortc loopback handshake + data-channel round trip (p50)",
    **details: Any,
) -> Any:
    """p50/p90 of a wake-to-live sample beside its reference's (and the bare pair with audio)."""
    p50, p90 = p50_p90(samples)
    ref50, ref90 = p50_p90(reference)
    audio50, audio90 = p50_p90(with_audio)
    return figure(
        p50,
        ref50,
        unit="ms (p50)",
        reference_name=reference_name,
        target=f"ratio of p50s <= {WAKE_TO_LIVE_LIMIT_RATIO}",
        met=p50 <= WAKE_TO_LIVE_LIMIT_RATIO * ref50,
        p50=round(p50, 1),
        p90=round(p90, 1),
        n=len(samples),
        reference_p50=round(ref50, 1),
        reference_p90=round(ref90, 1),
        reference_n=len(reference),
        samples=[round(x, 1) for x in samples],
        reference_samples=[round(x, 1) for x in reference],
        # Not the reference: shows what an audio track each way adds to the bare handshake.
        with_audio_tracks_p50=round(audio50, 1),
        with_audio_tracks_p90=round(audio90, 1),
        **details,
    )


async def bench(plan: Plan, say: Progress) -> dict[str, Any]:
    """Run every measurement; the JSON report."""
    models_dir = ROOT / "models"
    load_before = os.getloadavg()
    figures: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="wakertc-bench-") as tmp:
        workdir = Path(tmp)
        async with Stack(workdir) as stack:
            say(f"emulator {stack.emulator_url}, companion {stack.companion_url}")
            figures.update(await daemon_process_figures(plan, stack, workdir, models_dir, say))
            figures["wake_to_live_gpt_live_ms"] = await gpt_live_figure(
                plan, stack, workdir, models_dir, figures["wake_to_live_ms"], say
            )
            sessions, reference, with_audio = await in_process_sessions(
                plan, stack, workdir, models_dir, say
            )
        figures["wake_to_live_in_process_ms"] = latency_figure(
            sessions,
            reference,
            with_audio,
            how="Daemon.start_conversation() (the button's path) in this process, beside the "
            "emulator; silent input",
        )
        figures["utterance_received_ratio"] = await utterance_figure(plan, workdir, models_dir, say)
        quick = plan.name == "quick"
        figures.update(await measure_audio_latency(quick, workdir / "latency", models_dir, say))
        figures.update(await measure_jitter(quick, workdir / "jitter", models_dir, say))
        figures.update(
            await asyncio.to_thread(measure_wake_word, quick, workdir / "wakeword", models_dir, say)
        )
    order = [
        "start_to_ready_s",
        "idle_rss_mb",
        "idle_cpu_s_per_min",
        "rss_after_first_conversation_mb",
        "idle_rss_after_n_conversations_mb",
        "wake_to_live_ms",
        "wake_to_live_gpt_live_ms",
        "wake_to_live_in_process_ms",
        "utterance_received_ratio",
        "mic_to_wire_ms",
        "wire_to_speaker_ms",
        "jitter_underruns_per_min",
        "jitter_depth_recovery_ms",
        "wake_word_detection_rate",
        "wake_word_false_accepts_per_hour",
    ]
    ordered = {name: figures[name] for name in order}
    targets = {name: f["met"] for name, f in ordered.items() if f["met"] is not None}
    return {
        "mode": plan.name,
        "figures": ordered,
        "targets_met": targets,
        "all_targets_met": all(targets.values()),
        "machine": {
            "date": time.strftime("%Y-%m-%d %H:%M:%S %z"),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "loadavg_before": [round(x, 2) for x in load_before],
            "loadavg_after": [round(x, 2) for x in os.getloadavg()],
            "note": "shared machine: other processes compete for the cores; figures are noisy",
        },
        "runtime_s": round(say.elapsed, 1),
    }


def print_table(report: dict[str, Any]) -> None:
    """A human-readable summary on stderr."""
    print(f"\n{'figure':<34}{'value':>12}{'reference':>12}{'ratio':>8}  target", file=sys.stderr)
    for name, f in report["figures"].items():
        verdict = "" if f["met"] is None else ("met" if f["met"] else "MISSED")
        print(
            f"{name:<34}{f['value']:>12.4g}{f['reference']:>12.4g}{f['ratio']:>8.3g}  "
            f"{f['target'] or '-'} {verdict}",
            file=sys.stderr,
        )
    print(f"runtime {report['runtime_s']} s ({report['mode']})", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    """Parse the arguments, run the bench, print the report."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer samples, under a minute")
    parser.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    parser.add_argument(
        "--sessions",
        type=int,
        metavar="N",
        help="conversations in the daemon process (RSS after N), wake-to-live sessions and "
        "conversations in the GPT-Live daemon process (default "
        f"{QUICK.conversations}/{QUICK.live_sessions}/{QUICK.gpt_live_conversations} quick, "
        f"{FULL.conversations}/{FULL.live_sessions}/{FULL.gpt_live_conversations} full)",
    )
    args = parser.parse_args(argv)
    plan = QUICK if args.quick else FULL
    if args.sessions is not None:
        if args.sessions < 1:
            parser.error("--sessions must be at least 1")
        plan = replace(
            plan,
            conversations=args.sessions,
            live_sessions=args.sessions,
            gpt_live_conversations=args.sessions,
        )
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    say = Progress()
    report = asyncio.run(bench(plan, say))
    print_table(report)
    if args.json:
        print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
