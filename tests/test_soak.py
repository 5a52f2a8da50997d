"""Soak: 200 wake -> short conversation -> hang-up cycles in one daemon, without leaks.

The emulator and the companion run as child processes, so this process holds the daemon and
the test harness only; the harness keeps no history (`keep_history=False`), so what could grow
is the daemon's. Each cycle: a wake (the button; the wake word every tenth cycle), the session,
a short question, the reply (the emulator's echo of it), a press to hang up, back to IDLE.

Measured from /proc/self when the device is idle again: resident memory (VmRSS), open file
descriptors, and threads (kernel tasks: PortAudio's, gpiozero's and the executor's included).
The fd and thread baselines are taken after a few warm-up cycles: by then the start-up preload
(WebRTC, the echo canceller's threads) is done, the HTTP clients hold their pooled connection and
the thread pool its second worker; from then on a cycle must leave nothing behind.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from chain import Chain, Remote, clip, run_chain
from test_process_faults import start_services
from wakertc.memory import limit_malloc_arenas
from wakertc.state import Phase

# ~2.4 s a cycle here: about 8 minutes, far beyond the suite's default timeout.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(1500)]

CYCLES = 200
RSS_FROM_CYCLE = 20  # the window: RSS may grow by less than RSS_GROWTH_MB from here
RSS_GROWTH_MB = 5.0
WARM_UP = 5  # fds and threads are compared with their count after this many cycles
# asyncio's default executor: a ThreadPoolExecutor of min(32, cpus + 4) workers, started one at a
# time when `to_thread` calls overlap and then kept: bounded, so not a leak, but not constant.
POOL_MAX = min(32, (os.cpu_count() or 1) + 4)
DEVICE = {"session": {"idle_timeout_s": 10.0, "silence_duration_ms": 300}}


@dataclass(frozen=True)
class Usage:
    """What this process holds."""

    rss_mb: float
    fds: int
    threads: int  # all but the event loop's default thread pool
    pool_threads: int  # that pool's workers: it grows on demand, up to POOL_MAX, and keeps them


def usage() -> Usage:
    """VmRSS, open fds and threads of this process, from /proc."""
    status = Path("/proc/self/status").read_text()
    rss_kb = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:"))
    fds, threads = os.listdir("/proc/self/fd"), os.listdir("/proc/self/task")
    pool = sum(t.name.startswith("asyncio_") for t in threading.enumerate())
    return Usage(rss_kb / 1024, len(fds), len(threads) - pool, pool)


async def settled(baseline: Usage, within_s: float = 3.0) -> Usage:
    """Usage once fds and threads are back to `baseline` (a closed peer's sockets and an
    executor's idle workers go away shortly after the phase change), or after `within_s`."""
    deadline = time.monotonic() + within_s
    while True:
        now = usage()
        if (now.fds <= baseline.fds and now.threads <= baseline.threads) or (
            time.monotonic() > deadline
        ):
            return now
        await asyncio.sleep(0.1)


async def one_cycle(chain: Chain, n: int) -> None:
    """Wake, ask, hear the reply, hang up; back to IDLE."""
    if n % 10 == 0:
        # In one breath, as people do: a pause after "jarvis" would be a turn of its own.
        chain.mic.speak(clip("hey jarvis, what time is it"))
        want = "wake word hey_jarvis"
    else:
        await chain.press()
        want = "button"
    wake, _, _ = await chain.expect(Phase.WAKE, Phase.CONNECTING, Phase.LISTENING, timeout=10)
    assert wake.reason == want, f"cycle {n}: {chain.describe()}"
    if n % 10:
        chain.mic.speak(clip("hi"))
    await chain.expect(Phase.THINKING, Phase.SPEAKING, timeout=10)
    (finished,) = await chain.expect(Phase.LISTENING, timeout=10)
    assert finished.reason == "reply finished", f"cycle {n}: {chain.describe()}"
    await chain.press()
    (over,) = await chain.expect(Phase.IDLE, timeout=5)
    assert over.reason == "conversation over (button)", f"cycle {n}: {chain.describe()}"
    chain.forget_seen()


async def test_200_conversations_leave_no_trace(tmp_path, models_dir):
    # As `wakertc run` does first thing (process-wide and harmless for the tests that follow):
    # without it, every thread's malloc arena keeps its own high-water mark.
    limit_malloc_arenas()
    (tmp_path / "services").mkdir()
    services = await start_services(tmp_path / "services", emulator_args=("--reply", "echo"))
    remote = Remote(services.companion.url, services.emulator.url, services.token_file)
    samples: dict[int, Usage] = {}
    try:
        async with run_chain(
            tmp_path / "device", models_dir, remote=remote, device=DEVICE, keep_history=False
        ) as chain:
            baseline = usage()
            for n in range(1, CYCLES + 1):
                await one_cycle(chain, n)
                if n == WARM_UP:
                    baseline = await settled(usage(), within_s=1.0)
                    samples[n] = baseline
                elif n > WARM_UP and (n % 20 == 0 or n == RSS_FROM_CYCLE):
                    samples[n] = await settled(baseline)
                    now = samples[n]
                    assert (now.fds, now.threads) == (baseline.fds, baseline.threads), (
                        f"after cycle {n}: {now} against {baseline} after cycle {WARM_UP}"
                    )
                    assert now.pool_threads <= POOL_MAX, now
            assert chain.daemon.conversations == CYCLES
    finally:
        await asyncio.gather(services.emulator.stop(), services.companion.stop())
    report = ", ".join(
        f"{n}: {u.rss_mb:.1f} MB/{u.fds} fds/{u.threads}+{u.pool_threads} threads"
        for n, u in samples.items()
    )
    print(f"soak usage by cycle: {report}")
    growth = samples[CYCLES].rss_mb - samples[RSS_FROM_CYCLE].rss_mb
    assert growth < RSS_GROWTH_MB, f"RSS grew {growth:.1f} MB from cycle {RSS_FROM_CYCLE}: {report}"
