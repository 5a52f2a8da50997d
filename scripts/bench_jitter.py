#!/usr/bin/env python3
"""The playback queue on a jittery path, through the whole chain (issue 15's jitter targets).

    .venv/bin/python scripts/bench_jitter.py [--quick] [--json]

The emulator's `jitter` fault (30 ms +- 20 ms, 1 % loss on its outgoing RTP: this machine's
kernel has no netem) against the real daemon in this process, with tests/chain.py's harness (the
file backend's real playback pacing; the emulator, the companion and the daemon on loopback), as
tests/test_jitter_chain.py does once. Spoken replies (espeak-ng reading tests/chain.py's
STORY two or three times over), one per conversation, each asked for by a spoken question. Figures:

- `jitter_underruns_per_min`: underruns of the playback queue per minute of reply audio under
  the fault for the whole call (target <= 1); reference: the same replies on the clean path.
- `jitter_depth_recovery_ms`: the queue's mean depth over the second from 5 s to 6 s after the
  path turned clean (`jitter=30,20,1,S`: bad for the call's first S seconds, then clean);
  reference: the mean depth over the same replies on the clean path (target: within 10 ms).

The depth is read every 20 ms while a reply plays (`playback_queued_s`, ms of audio queued
ahead of the device).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))  # the chain harness the tests use

from bench_report import figure  # noqa: E402
from chain import STORY, clip, run_chain  # noqa: E402
from wakertc.state import Phase  # noqa: E402

UNDERRUNS_LIMIT_PER_MIN = 1.0
RECOVERY_LIMIT_MS = 10.0
RECOVERY_AFTER_S = 5.0


@dataclass(frozen=True)
class Plan:
    """Replies of `stories` times tests/chain.py's STORY (~8 s each), `count` of each kind; the
    recovering path is bad for the call's first `bad_for_s` seconds (the question and the turn
    take ~2.5 s of them), leaving at least 6 s of reply on the clean path after it, with the
    pauses between sentences and clauses where the queue may follow its target (audio.py)."""

    count: int
    stories: int
    bad_for_s: float

    @property
    def reply(self) -> str:
        return " ".join([STORY] * self.stories)


QUICK = Plan(count=1, stories=2, bad_for_s=8.0)
FULL = Plan(count=3, stories=3, bad_for_s=12.0)
QUESTION = "tell me a story"
QUIET = {"sounds": {"enabled": False}}


@dataclass
class Reply:
    """One reply as the device played it."""

    played_s: float
    underruns: int
    depth: list[tuple[float, float]] = field(default_factory=list)  # (monotonic, seconds queued)


class _CleanAt(logging.Handler):
    """When the emulator's jitter path turned clean (its log line), on the loop's clock."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.at: list[float] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.getMessage().startswith("jitter path clean"):
            self.at.append(time.monotonic())  # asyncio's loop.time() is time.monotonic()


async def replies(
    workdir: Path, models_dir: Path, faults: tuple[str, ...], plan: Plan
) -> list[Reply]:
    """`count` conversations, one reply each, in one daemon; what each reply did to the queue."""
    done: list[Reply] = []
    # The chain harness turns the package's logging up to INFO for its own records; what reaches
    # the console stays at WARNING.
    for handler in logging.getLogger().handlers:
        handler.setLevel(max(handler.level, logging.WARNING))
    async with run_chain(
        workdir, models_dir, reply="speech", reply_text=plan.reply, faults=faults, device=QUIET
    ) as chain:
        speaker = chain.mic.file
        for _ in range(plan.count):
            ran_dry = speaker.playback_underruns
            await chain.press()
            await chain.expect(Phase.WAKE, Phase.CONNECTING, Phase.LISTENING)
            chain.mic.speak(clip(QUESTION))
            await chain.expect(Phase.THINKING, Phase.SPEAKING, timeout=60)
            started = time.monotonic()
            depth = await chain.sample_until(
                Phase.LISTENING, lambda: (time.monotonic(), speaker.playback_queued_s), timeout=90
            )
            played_s = time.monotonic() - started
            done.append(Reply(played_s, speaker.playback_underruns - ran_dry, depth))
            await chain.wait_phase(Phase.IDLE, timeout=30)  # idle timeout: the call ends
    return done


def mean_depth_ms(depth: list[tuple[float, float]], start: float, end: float) -> float | None:
    values = [d for t, d in depth if start <= t < end and d > 0]
    return statistics.mean(values) * 1000 if values else None


async def measure(quick: bool, workdir: Path, models_dir: Path, say: Any = print) -> dict[str, Any]:
    """Both figures: QUICK (one reply of each kind) or FULL (three)."""
    plan = QUICK if quick else FULL
    count = plan.count
    clean = await replies(workdir / "clean", models_dir, (), plan)
    say(f"clean path: {count} replies")
    jittery = await replies(workdir / "jitter", models_dir, ("jitter",), plan)
    say(f"jittery path: {count} replies")
    clean_at = _CleanAt()
    path_log = logging.getLogger("wakertc.emulator.netpath")
    path_log.addHandler(clean_at)
    try:
        recovering = await replies(
            workdir / "recovering", models_dir, (f"jitter=30,20,1,{plan.bad_for_s:g}",), plan
        )
    finally:
        path_log.removeHandler(clean_at)
    say(f"recovering path: {count} replies")
    if len(clean_at.at) != count:
        raise RuntimeError(f"the jitter path turned clean {len(clean_at.at)} times, not {count}")

    # Clean: the whole of each reply after its first second (the first half second of a
    # device's first reply is held at START_S while the path is measured, playout.py).
    clean_depths = [mean_depth_ms(r.depth, r.depth[0][0] + 1.0, r.depth[-1][0]) for r in clean]
    clean_ms = statistics.mean(d for d in clean_depths if d is not None)
    after = [
        mean_depth_ms(r.depth, at + RECOVERY_AFTER_S, at + RECOVERY_AFTER_S + 1.0)
        for r, at in zip(recovering, clean_at.at, strict=True)
    ]
    if any(a is None for a in after):
        raise RuntimeError("a reply ended less than 6 s after its path turned clean")
    recovered_ms = statistics.mean(a for a in after if a is not None)
    during = [
        mean_depth_ms(r.depth, r.depth[0][0], at)
        for r, at in zip(recovering, clean_at.at, strict=True)
    ]

    def per_min(batch: list[Reply]) -> float:
        return sum(r.underruns for r in batch) / (sum(r.played_s for r in batch) / 60)

    underruns = per_min(jittery)
    reference = per_min(clean)
    return {
        "jitter_underruns_per_min": figure(
            underruns,
            reference,
            unit="underruns per minute of reply audio",
            reference_name="the same replies on the clean path",
            target=f"<= {UNDERRUNS_LIMIT_PER_MIN:g}",
            met=underruns <= UNDERRUNS_LIMIT_PER_MIN,
            # Both sides may be 0: the ratio is taken on the rates plus one.
            ratio=(underruns + 1) / (reference + 1),
            ratio_rule="(underruns per minute + 1) / (reference's + 1)",
            underruns=[r.underruns for r in jittery],
            reference_underruns=[r.underruns for r in clean],
            reply_s=[round(r.played_s, 2) for r in jittery],
            fault="jitter (30 ms +- 20 ms, 1 % loss)",
        ),
        "jitter_depth_recovery_ms": figure(
            recovered_ms,
            clean_ms,
            unit=f"ms queued {RECOVERY_AFTER_S:g}-{RECOVERY_AFTER_S + 1:g} s after it cleared",
            reference_name="mean depth on the clean path, same replies",
            target=f"within {RECOVERY_LIMIT_MS:g} ms of the reference",
            met=abs(recovered_ms - clean_ms) <= RECOVERY_LIMIT_MS,
            samples=[round(a, 1) for a in after if a is not None],
            reference_samples=[round(d, 1) for d in clean_depths if d is not None],
            while_jittery_ms=[round(d, 1) for d in during if d is not None],
            fault=f"jitter=30,20,1,{plan.bad_for_s:g}: clean after the call's first "
            f"{plan.bad_for_s:g} s",
        ),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one reply of each kind")
    parser.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    def say(text: str) -> None:
        print(text, file=sys.stderr)

    with tempfile.TemporaryDirectory(prefix="wakertc-bench-jitter-") as tmp:
        figures = asyncio.run(measure(args.quick, Path(tmp), ROOT / "models", say))
    for name, f in figures.items():
        print(
            f"{name}: {f['value']:g} (reference {f['reference']:g}) {f['target']} "
            f"{'met' if f['met'] else 'MISSED'}",
            file=sys.stderr,
        )
    if args.json:
        print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
