"""Soak: 200 wake -> short conversation -> hang-up cycles in one daemon, without leaks.

The cycles run in their own process (tests/soak.py: the daemon in-process as in chain.py, the
emulator and the companion as its children), so what is measured is the daemon's. The limits:
every cycle completes, resident memory grows by less than 5 MB from cycle 20 to 200, and open
file descriptors and threads are back to their count after the warm-up at every sample
(asyncio's default thread pool may grow, but only up to its bound).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

# ~2.4 s a cycle here: about 8 minutes, far beyond the suite's default timeout.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(1500)]

SOAK = Path(__file__).with_name("soak.py")
CYCLES = 200
RSS_FROM_CYCLE = 20  # the window: RSS may grow by less than RSS_GROWTH_MB from here
RSS_GROWTH_MB = 5.0
# asyncio's default executor: a ThreadPoolExecutor of min(32, cpus + 4) workers, started one at a
# time when `to_thread` calls overlap and then kept: bounded, so not a leak, but not constant.
POOL_MAX = min(32, (os.cpu_count() or 1) + 4)


def test_200_conversations_leave_no_trace(tmp_path, models_dir):
    done = subprocess.run(
        [sys.executable, str(SOAK), str(tmp_path), str(models_dir.resolve()), str(CYCLES), "20"],
        capture_output=True,
        text=True,
        timeout=1400,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    samples = {int(n): usage for n, usage in result["samples"].items()}
    baseline = samples[result["warm_up"]]
    report = ", ".join(
        f"{n}: {u['rss_mb']:.1f} MB/{u['fds']} fds/{u['threads']}+{u['pool_threads']} threads"
        for n, u in samples.items()
    )
    print(f"soak usage by cycle: {report}")
    assert set(samples) >= {RSS_FROM_CYCLE, CYCLES}, report
    for n, now in samples.items():
        assert (now["fds"], now["threads"]) == (baseline["fds"], baseline["threads"]), (
            f"after cycle {n}: {now} against {baseline} after the warm-up"
        )
        assert now["pool_threads"] <= POOL_MAX, now
    growth = samples[CYCLES]["rss_mb"] - samples[RSS_FROM_CYCLE]["rss_mb"]
    assert growth < RSS_GROWTH_MB, f"RSS grew {growth:.1f} MB from cycle {RSS_FROM_CYCLE}: {report}"
