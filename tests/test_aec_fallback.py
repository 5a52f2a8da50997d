"""livekit's native library failing to load: the daemon falls back to half-duplex and says so.

The failure is made real in a fresh interpreter (livekit, once loaded, stays loaded): the outer
test runs the inner one in a pytest subprocess where
- `import-oserror`: a `livekit` package first on the path whose import loads a file that is not
  a shared library with ctypes, as livekit versions that load at import do: the dynamic loader's
  own OSError (what a wheel built for a newer glibc gives);
- `bad-library`: the real livekit, pointed by its `LIVEKIT_LIB_PATH` at that file: its loader
  fails at first use, which this version reports as an ImportError.

The inner test is the half-duplex conversation of test_conversation.py with the echo canceller
asked for (the default): the speaker loud in the microphone, the reply must not be interrupted
by its own echo, and none of it may reach the session.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import pytest

from chain import STORY, clip, run_chain
from wakertc.state import Phase

ROOT = Path(__file__).resolve().parent.parent
INNER = "WAKERTC_TEST_BROKEN_AEC"  # set only in the subprocess
SHADOW = """import ctypes
ctypes.CDLL({library!r})  # raises OSError: not a shared library
"""


@pytest.mark.parametrize("how", ["import-oserror", "bad-library"])
def test_echo_canceller_failing_to_load_falls_back_to_half_duplex(
    how: str, tmp_path: Path, models_dir: Path
) -> None:
    library = tmp_path / "liblivekit_ffi.so"
    library.write_text("not a shared library\n")
    env = {**os.environ, INNER: how, "WAKERTC_MODELS": str(models_dir)}
    path = [str(ROOT / "daemon"), env.get("PYTHONPATH", "")]
    if how == "import-oserror":
        shadow = tmp_path / "shadow" / "livekit" / "rtc"
        shadow.mkdir(parents=True)
        (shadow.parent / "__init__.py").write_text("")
        (shadow / "__init__.py").write_text(SHADOW.format(library=str(library)))
        path.insert(0, str(tmp_path / "shadow"))
    else:
        env["LIVEKIT_LIB_PATH"] = str(library)
    env["PYTHONPATH"] = os.pathsep.join(p for p in path if p)
    inner = f"{Path(__file__).name}::test_inner_conversation_without_the_echo_canceller"
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-s", inner],
        cwd=Path(__file__).parent,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0 and "1 passed" in output, output[-4000:]
    error = "OSError" if how == "import-oserror" else "ImportError"
    assert f"echo cancellation unavailable ({error}: " in output, output[-4000:]


async def test_inner_conversation_without_the_echo_canceller(
    tmp_path: Path, models_dir: Path
) -> None:
    """Run by the test above in a subprocess where livekit cannot load."""
    if not os.environ.get(INNER):
        pytest.skip("runs inside test_echo_canceller_failing_to_load_falls_back_to_half_duplex")
    async with run_chain(
        tmp_path / "chain", models_dir, script=[{"say": STORY}], echo_gain=0.5
    ) as chain:
        # Loaded (and failed) in the background right after start-up.
        _, line = await chain.wait_log("echo cancellation unavailable", timeout=10)
        print(f"logged: {line}")
        assert "falling back to half-duplex" in line and "\n" not in line
        chain.mic.speak(clip("hey jarvis, tell me a story"))  # in one breath, as people do
        await chain.expect(
            Phase.WAKE, Phase.CONNECTING, Phase.LISTENING, Phase.THINKING, Phase.SPEAKING
        )
        speaking = chain.current
        await asyncio.sleep(0.5)
        listening, _ = await chain.expect(Phase.LISTENING, Phase.IDLE, timeout=30)
        assert listening.reason == "reply finished", chain.describe()
        reply = (chain.heard_position(speaking.t), chain.heard_position(listening.t))
        assert chain.received_ratio(reply) == 0.0  # its own echo never went up
        events = [e["type"] for e in chain.received()]
        assert events.count("input_audio_buffer.speech_started") == 1
