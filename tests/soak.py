"""The soak's own process: `python tests/soak.py WORKDIR MODELS_DIR CYCLES [SAMPLE_EVERY]`.

A fresh process, so that what it measures is the daemon's alone (inside pytest, objects, threads
and sockets that earlier tests leave for the garbage collector come and go during the soak). The
emulator and the companion run as its child processes; the harness keeps no history
(`keep_history=False`). Each cycle: a wake (the button; the wake word every tenth cycle), the
session, a short question, the reply (the emulator's echo of it), a press to hang up, back to
IDLE. Any cycle that goes otherwise raises (exit status 1, the phases in the message).

It prints one JSON object: per sampled cycle (after the warm-up, every SAMPLE_EVERY cycles and
the last) VmRSS, open fds, threads outside asyncio's default pool, that pool's workers, and the
thread names; taken once the device is idle again. The fd and thread baseline is the count after
a few warm-up cycles: by then the start-up preload (WebRTC, the echo canceller's threads) is
done, the HTTP clients hold their pooled connection and the thread pool its second worker.
"""

from __future__ import annotations

import asyncio
import collections
import json
import os
import re
import sys
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from chain import Chain, Remote, clip, run_chain
from process_helpers import start_services
from wakertc.memory import limit_malloc_arenas
from wakertc.state import Phase

WARM_UP = 5  # fds and threads are compared with their count after this many cycles
DEVICE = {"session": {"idle_timeout_s": 10.0}}
# Quicker turns: the companion's turn detection (the session policy is the companion's).
COMPANION = "\n[session.turn_detection]\nsilence_duration_ms = 300\n"


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


def thread_names() -> dict[str, int]:
    """How many threads of each name (numbers dropped) this process runs, native ones included."""
    names = collections.Counter(
        re.sub(r"[-_ ]?\d+", "", Path(f"/proc/self/task/{task}/comm").read_text().strip())
        for task in os.listdir("/proc/self/task")
    )
    return dict(sorted(names.items()))


async def steady(within_s: float = 6.0) -> Usage:
    """Usage once fds and threads have not changed for a second: a call's sockets and codec
    threads go a moment after the phase change (the daemon collects and trims 1 s after it)."""
    deadline = time.monotonic() + within_s
    last = usage()
    since = time.monotonic()
    while time.monotonic() < deadline:
        await asyncio.sleep(0.1)
        now = usage()
        if (now.fds, now.threads, now.pool_threads) != (last.fds, last.threads, last.pool_threads):
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= 1.0:
            break
    return last


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


async def soak(workdir: Path, models_dir: Path, cycles: int, every: int) -> dict[str, object]:
    """Run the cycles; usage samples by cycle number."""
    # As `wakertc run` does first thing: without it, every thread's malloc arena keeps its own
    # high-water mark.
    limit_malloc_arenas()
    (workdir / "services").mkdir(parents=True)
    services = await start_services(
        workdir / "services", emulator_args=("--reply", "echo"), companion_extra=COMPANION
    )
    remote = Remote(services.companion.url, services.emulator.url, services.token_file)
    samples: dict[int, dict[str, object]] = {}
    try:
        async with run_chain(
            workdir / "device", models_dir, remote=remote, device=DEVICE, keep_history=False
        ) as chain:
            for n in range(1, cycles + 1):
                await one_cycle(chain, n)
                if n < WARM_UP or (n > WARM_UP and n % every and n != cycles):
                    continue
                sample = await steady()
                samples[n] = {
                    **asdict(sample),
                    "thread_names": thread_names(),
                    "python_threads": sorted(t.name for t in threading.enumerate()),
                }
            if chain.daemon.conversations != cycles:
                raise AssertionError(f"{chain.daemon.conversations} conversations, not {cycles}")
    finally:
        await asyncio.gather(services.emulator.stop(), services.companion.stop())
    return {"warm_up": WARM_UP, "samples": samples}


def main(argv: list[str]) -> int:
    """Command line: see the module docstring."""
    workdir, models_dir, cycles = Path(argv[0]), Path(argv[1]), int(argv[2])
    every = int(argv[3]) if len(argv) > 3 else 20
    print(json.dumps(asyncio.run(soak(workdir, models_dir, cycles, every))))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
