"""End to end through real audio: the daemon's PyAudio backend on a private PulseAudio server.

The same chain as test_conversation.py (emulator + companion + the real daemon, wake-word models,
WebRTC on loopback), except that the microphone and the speaker are real PortAudio devices at
rates other than 16 kHz (see pulse.py: a 48 kHz stereo microphone, a 44.1 kHz mono speaker).
What is said is played into the microphone sink in real time (`paplay`); what the device says is
captured in-process from the speaker's monitor, each 10 ms block stamped with the monotonic time
it arrived (`MonitorTap`), so it can be set against phase changes and button presses.

- a wake phrase and a question in one breath come back as the echo reply, correlated with the
  question; phases and LEDs follow;
- a button press during a long reply silences the speaker at once and cancels the reply upstream;
- with the speaker looped back into the microphone (`module-loopback`), the echo canceller (or
  half-duplex) keeps the device's own voice from triggering the server's VAD; with neither, the
  device interrupts itself;
- a known gap, as a strict xfail: after a button press the wake cue heard back is taken for the
  user speaking.

The emulator's VAD is energy-based (emulator/vad.py), so what it hears is also measured as a level
(`model_heard_dbfs`) beside the echo at the microphone (a second tap, on the microphone's monitor).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import wave
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soxr

from chain import BUTTON_PIN, Chain, merge_tables, run_chain
from pulse import PulseRig, pulse_rig  # noqa: F401  (fixture)
from speech import synth
from wakertc.audio import PyAudioBackend
from wakertc.config import DEFAULT_PATTERNS
from wakertc.emulator.options import ReplyPolicy
from wakertc.leds import colour
from wakertc.measure import ENVELOPE_HOP_S, align, envelope, received_ratio, write_wav
from wakertc.state import Phase

pytestmark = pytest.mark.pulse

RATE = 16000
WAKE = "hey jarvis"
QUESTION = "what is the weather like today"
LONG_REPLY = (
    "Here is the forecast for the whole week. Monday will be sunny and mild, Tuesday brings "
    "showers in the afternoon, Wednesday stays cloudy with a light breeze from the west, and "
    "Thursday and Friday should be warm and dry."
)
SPEECH_REPLY = "It is sunny and mild today, with a high of twenty one degrees."
# espeak-ng's British voice at 130 wpm: "hey jarvis" scores ~0.97 on hey_jarvis_v0.1 with the
# question following at once (en-us at 140 wpm scores only ~0.55 there, too close to 0.5).
VOICE, WPM = "en-gb", 130
# Other requests about as long as the question: what the correlation reaches by chance (~0.3-0.5).
UNRELATED = (
    "remind me to call my sister tomorrow",
    "how many days are there until christmas",
    "turn the volume down a little bit please",
)
MIC_CHANNEL = 1  # the speech is on the right channel; the left carries a tone it must not hear
AUDIBLE_PEAK = 300  # about -40 dBFS: anything louder at the speaker is "sound"
LOOPBACK_MS = 40  # module-loopback's target latency: speaker -> microphone


# -- the speaker and the microphone, as heard from their monitors ---------------------------


class MonitorTap:
    """Captures a PulseAudio device in-process: 10 ms mono blocks with their arrival times.

    On the rig's loopback device it hears what the speaker plays; on its input device, what the
    microphone hears. Arrival lags what the sink plays by the capture path's own latency (a few
    tens of ms), so times measured with it are upper bounds.
    """

    def __init__(self, device: str, rate: int) -> None:
        import pyaudio

        self.rate = rate
        self.blocks: list[tuple[float, np.ndarray]] = []
        self._pa = pyaudio.PyAudio()
        self._continue = pyaudio.paContinue
        try:
            index = next(
                i
                for i in range(self._pa.get_device_count())
                if self._pa.get_device_info_by_index(i)["name"] == device
            )
            self._stream = self._pa.open(
                format=pyaudio.paInt16,
                channels=1,
                rate=rate,
                input=True,
                input_device_index=index,
                frames_per_buffer=rate // 100,
                stream_callback=self._captured,
            )
        except BaseException:
            self._pa.terminate()
            raise

    def _captured(self, data: bytes, frames: int, info: Any, status: int) -> tuple[None, int]:
        self.blocks.append((time.monotonic(), np.frombuffer(data, np.int16).copy()))
        return None, self._continue

    def close(self) -> None:
        """Stop capturing (idempotent)."""
        if self._pa is not None:
            self._stream.close()
            self._pa.terminate()
            self._pa = None

    @property
    def latest(self) -> float:
        """Arrival time of the last block (0 before the first)."""
        return self.blocks[-1][0] if self.blocks else 0.0

    async def until(self, t: float, timeout: float = 5.0) -> None:
        """Wait until blocks that arrived after monotonic time `t` are in."""
        deadline = time.monotonic() + timeout
        while self.latest < t:
            assert time.monotonic() < deadline, f"the speaker tap stalled at {self.latest}"
            await asyncio.sleep(0.02)

    def audio(self, start: float, end: float) -> np.ndarray:
        """What arrived between two monotonic times, float32 in -1..1 at 16 kHz."""
        chunks = [b for t, b in list(self.blocks) if start <= t <= end]
        if not chunks:
            return np.zeros(0, np.float32)
        samples = np.concatenate(chunks).astype(np.float32) / 32768.0
        return np.asarray(soxr.resample(samples, self.rate, RATE), np.float32)

    async def wait_audible(self, since: float, seconds: float, timeout: float = 10.0) -> None:
        """Wait until `seconds` of sound have arrived since monotonic time `since`."""
        deadline = time.monotonic() + timeout
        while len(self.audible(since, time.monotonic())) * 0.01 < seconds:
            assert time.monotonic() < deadline, f"not {seconds} s of sound within {timeout} s"
            await asyncio.sleep(0.02)

    def audible(self, start: float, end: float, peak: int = AUDIBLE_PEAK) -> list[float]:
        """Arrival times of the blocks between `start` and `end` louder than `peak`."""
        return [
            t
            for t, b in list(self.blocks)
            if start <= t <= end and int(np.abs(b).max(initial=0)) >= peak
        ]

    def loudest_dbfs(self, start: float, end: float) -> float:
        """The loudest 10 ms (RMS, dBFS) of what arrived between two monotonic times."""
        return loudest_dbfs(self.audio(start, end))

    def rms(self, start: float, end: float) -> float:
        """RMS (int16 units) of what arrived between two monotonic times."""
        chunks = [b for t, b in list(self.blocks) if start <= t <= end]
        if not chunks:
            return 0.0
        samples = np.concatenate(chunks).astype(np.float64)
        return float(np.sqrt(np.mean(samples**2)))


def loudest_dbfs(samples: np.ndarray) -> float:
    """The loudest 10 ms RMS of float audio (16 kHz) in dBFS; -100 for digital silence."""
    env = envelope(samples, RATE)
    return 20 * float(np.log10(max(float(env.max(initial=0.0)), 1e-5)))


# -- the microphone ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Said:
    """A WAV for the microphone sink and where the speech lies in it (seconds)."""

    path: Path
    speech: np.ndarray  # float32, 16 kHz: the speech channel as written
    start_s: float  # where the question (or the utterance) begins
    end_s: float


def mic_wav(path: Path, *parts: np.ndarray, lead_s: float = 0.5, tail_s: float = 1.5) -> Said:
    """`parts` (int16, 16 kHz) said in one breath, as a 48 kHz stereo WAV for the mic sink.

    The speech is on `MIC_CHANNEL`; the other channel carries a steady 300 Hz tone at -20 dBFS,
    which would keep the server's VAD from ever hearing the end of the turn (and the wake word
    from being heard) if the daemon took the wrong channel or mixed them.
    """
    lead = np.zeros(round(lead_s * RATE), np.int16)
    tail = np.zeros(round(tail_s * RATE), np.int16)
    speech = np.concatenate([lead, *parts, tail])
    at48k = np.asarray(soxr.resample(speech.astype(np.float32) / 32768.0, RATE, 48000))
    t = np.arange(len(at48k)) / 48000
    other = 0.1 * np.sin(2 * np.pi * 300 * t)
    channels = [other, at48k] if MIC_CHANNEL == 1 else [at48k, other]
    stereo = (np.clip(np.stack(channels, axis=1), -1, 1) * 32767).astype("<i2")
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(2)
        wav.setsampwidth(2)
        wav.setframerate(48000)
        wav.writeframes(stereo.tobytes())
    last = parts[-1]
    start = (len(speech) - len(tail) - len(last)) / RATE
    return Said(path, speech.astype(np.float32) / 32768.0, start, start + len(last) / RATE)


# -- the chain on real devices ----------------------------------------------------------------


@contextlib.asynccontextmanager
async def pulse_chain(
    rig: PulseRig,
    workdir: Path,
    models_dir: Path,
    *,
    reply: ReplyPolicy = "echo",
    reply_text: str = SPEECH_REPLY,
    device: Mapping[str, Any] | None = None,
) -> AsyncIterator[tuple[Chain, MonitorTap]]:
    """Emulator + companion + the daemon on the rig's devices; yields once the daemon is idle.

    The daemon gets the PyAudio backend `audio.backend = "pyaudio"` opens, at the rig's native
    formats (the speech on channel `MIC_CHANNEL`). On exit no `wakertc` record may carry a
    traceback.
    """
    audio = {"audio": rig.audio_table(input_channel=MIC_CHANNEL)}
    tap = MonitorTap(rig.loopback_device, rig.speaker_rate)
    try:
        async with run_chain(
            workdir,
            models_dir,
            reply=reply,
            reply_text=reply_text,
            device=merge_tables(audio, device or {}),
            real_audio=True,
        ) as chain:
            backend = chain.mic
            assert isinstance(backend, PyAudioBackend)
            assert (backend.input_rate, backend.input_channels) == (48000, 2)
            assert (backend.output_rate, backend.output_channels) == (44100, 1)
            yield chain, tap
    finally:
        tap.close()


def say(text: str) -> np.ndarray:
    """espeak-ng saying `text` (int16, 16 kHz), no padding."""
    return synth(text, voice=VOICE, wpm=WPM, pad_s=0)


async def played(rig: PulseRig, said: Said) -> None:
    """Play `said` into the microphone and wait until it has been played out."""
    player = rig.play_into_mic(said.path)
    returncode = await asyncio.to_thread(player.wait, 30)
    assert returncode == 0


def event_times(chain: Chain, kind: str, direction: str = "out") -> list[float]:
    """Monotonic times at which the emulator sent (or received) events of type `kind`."""
    started = chain.calls()[-1].started
    return [
        started + record["t"]
        for record in chain.events()
        if record["dir"] == direction and record.get("event", {}).get("type") == kind
    ]


def envelope_match(
    sent: np.ndarray, reply: np.ndarray, start_s: float, end_s: float
) -> tuple[float, float]:
    """Where `reply` starts in `sent` (s), and how well their loudness envelopes correlate over
    `sent[start_s:end_s]` once aligned (Pearson r of 10 ms RMS envelopes)."""
    offset_s = align(sent, reply, RATE).offset_s
    hop = round(ENVELOPE_HOP_S * RATE)
    a = envelope(sent, RATE)
    b = envelope(reply, RATE)
    first, last = int(start_s / ENVELOPE_HOP_S), int(end_s / ENVELOPE_HOP_S)
    shift = round(offset_s * RATE / hop)
    first, last = max(first, shift), min(last, shift + len(b))
    if last - first < 10:
        return offset_s, 0.0
    return offset_s, float(np.corrcoef(a[first:last], b[first - shift : last - shift])[0, 1])


# -- tests ------------------------------------------------------------------------------------


async def test_wake_phrase_and_question_come_back_from_the_speaker(
    pulse_rig: PulseRig,  # noqa: F811
    tmp_path: Path,
    models_dir: Path,
) -> None:
    """The wake phrase and a question in one breath into a 48 kHz stereo mic: the echo reply out
    of the 44.1 kHz speaker is the question said back; phases and LEDs follow the conversation."""
    said = mic_wav(tmp_path / "said.wav", say(WAKE), say(QUESTION))
    async with pulse_chain(pulse_rig, tmp_path / "chain", models_dir) as (chain, tap):
        player = asyncio.create_task(played(pulse_rig, said), name="mic-player")
        wake, connecting, live, _thinking, speaking, listening, idle = await chain.expect(
            Phase.WAKE,
            Phase.CONNECTING,
            Phase.LISTENING,
            Phase.THINKING,
            Phase.SPEAKING,
            Phase.LISTENING,
            Phase.IDLE,
            timeout=25,
        )
        await player
        await tap.until(idle.t + 0.3)
    assert chain.states()[:2] == ["starting", "idle"]
    assert wake.reason == "wake word hey_jarvis"
    assert speaking.reason == "reply audio" and listening.reason == "reply finished"
    assert idle.reason == "conversation over (idle timeout)"

    # What the speaker played while speaking is the question, said back.
    reply = tap.audio(speaking.t, listening.t + 0.3)
    write_wav(tmp_path / "reply.wav", reply, RATE)  # for a look when it fails
    offset_s, r = envelope_match(said.speech, reply, said.start_s, said.end_s)
    # The same measure for sentences it is not: how high chance alone gets.
    chance = max(
        envelope_match(unrelated, reply, 0.0, len(unrelated) / RATE)[1]
        for unrelated in (say(text).astype(np.float32) / 32768 for text in UNRELATED)
    )
    coverage = received_ratio(said.speech, reply, RATE, said.start_s, said.end_s)
    print(
        f"reply {len(reply) / RATE:.2f} s: envelope correlation over the question {r:.3f} "
        f"(unrelated sentences <= {chance:.3f}); reply starts {offset_s:.2f} s into what was "
        f"said (question from {said.start_s:.2f} s); question covered {coverage:.0%}"
    )
    assert r >= 0.9 and r - chance >= 0.3, (r, chance)
    # The echo starts in the wake phrase (the pre-roll before the detection) ...
    assert said.start_s - 1.0 <= offset_s <= said.start_s, offset_s
    # ... and all of the question came back.
    assert coverage >= 0.9

    # LEDs (RGB on pins 5, 6, 13): the default patterns, colour and effect.
    assert chain.leds(connecting).is_colour(DEFAULT_PATTERNS["connecting"].color)
    for seen in (live, listening):
        expected = colour(DEFAULT_PATTERNS["listening"].color)
        assert chain.led_at(seen.t + 0.05) == pytest.approx(expected, abs=0.002)
        assert chain.leds(seen).effect == "solid"
    shown = chain.leds(speaking)
    assert shown.effect == DEFAULT_PATTERNS["speaking"].effect == "pulse", shown
    assert shown.is_colour(DEFAULT_PATTERNS["speaking"].color), shown
    assert chain.leds(idle).effect == "off"


async def test_button_during_a_long_reply_silences_the_speaker_at_once(
    pulse_rig: PulseRig,  # noqa: F811
    tmp_path: Path,
    models_dir: Path,
) -> None:
    """Barge-in: pressing the button while the device speaks stops the sound within ~150 ms of
    the press (not the release), cancels the reply upstream, drops what is still in flight, and
    listens again; the release that follows does not end the conversation."""
    said = mic_wav(tmp_path / "said.wav", say(QUESTION), tail_s=0.2)
    async with pulse_chain(
        pulse_rig, tmp_path / "chain", models_dir, reply="speech", reply_text=LONG_REPLY
    ) as (chain, tap):
        await chain.press()
        await chain.expect(Phase.WAKE, Phase.CONNECTING, Phase.LISTENING)
        await played(pulse_rig, said)
        _, speaking = await chain.expect(Phase.THINKING, Phase.SPEAKING, timeout=15)
        await tap.wait_audible(speaking.t, 1.0)  # a second into the reply (it lasts ~12 s)
        button = chain.factory.pin(BUTTON_PIN)
        pressed = time.monotonic()
        button.drive_low()
        await asyncio.sleep(0.1)  # a quick human press
        released = time.monotonic()
        button.drive_high()
        (interrupted,) = await chain.expect(Phase.LISTENING, timeout=2)
        await tap.until(released + 1.2)
        (idle,) = await chain.expect(Phase.IDLE, timeout=5)

    assert interrupted.reason == "interrupted by button"
    # The speaker: loud before the press, quiet from shortly after it on.
    before = tap.rms(pressed - 1.0, pressed)
    still_sounding = tap.audible(pressed, released + 1.2)
    last_sound = max(still_sounding) if still_sounding else pressed
    after = tap.rms(last_sound + 0.01, released + 1.2)
    print(
        f"barge-in: last audible speaker block {1000 * (last_sound - released):.0f} ms after the "
        f"release ({1000 * (last_sound - pressed):.0f} ms after the press down, "
        f"{1000 * (last_sound - interrupted.t):.0f} ms after the barge-in); level {before:.0f} "
        f"RMS before, {after:.1f} after"
    )
    assert before > 1000
    # The press acts once debounced (button.bounce_s, 50 ms), before the release ...
    assert interrupted.t - pressed <= chain.config.button.bounce_s + 0.03
    assert interrupted.t < released
    # ... then only what PortAudio and PulseAudio already hold still sounds (~40 ms buffer, the
    # 20 ms block being written, the 5 ms fade), plus the tap's own capture delay.
    assert last_sound - interrupted.t <= 0.12
    assert last_sound - pressed <= chain.config.button.bounce_s + 0.12
    assert after < before / 100  # -40 dB: nothing of the cancelled reply trickles out later

    # Upstream: the reply was cancelled and the server's output buffer cleared, at the press.
    sent = [e["type"] for e in chain.sent()]
    assert "response.cancel" in sent and "output_audio_buffer.clear" in sent
    for kind in ("response.cancel", "output_audio_buffer.clear"):
        (at,) = event_times(chain, kind, direction="in")
        assert pressed < at < pressed + 0.3, (kind, at - pressed)
    done = [e for e in chain.received() if e["type"] == "response.done"]
    assert done and done[-1]["response"]["status"] == "cancelled"
    assert idle.reason == "conversation over (idle timeout)"


AEC_REPLY = (
    "Sure. The forecast says sunshine all morning, clouds after lunch, and a warm evening. "
    "Tomorrow looks much the same, with a light breeze."
)
# What the emulator's energy VAD takes for speech at the daemon's vad_threshold of 0.5 (vad.py).
VAD_ON_DBFS = -40.0


def model_heard_dbfs(chain: Chain, start: float, end: float) -> float:
    """The loudest 10 ms of what reached the model between two monotonic times (dBFS).

    The call's input.wav has no timestamps; the emulator's first speech_stopped event ties a
    position in it (audio_end_ms) to a time, and the audio streams in real time from there.
    """
    started = chain.calls()[-1].started
    anchor = next(
        r
        for r in chain.events()
        if r["dir"] == "out"
        and r.get("event", {}).get("type") == "input_audio_buffer.speech_stopped"
    )
    at = started + anchor["t"]
    position = anchor["event"]["audio_end_ms"] / 1000
    audio = chain.recording()
    first, last = (round((position + t - at) * RATE) for t in (start, end))
    assert 0 <= first < last <= len(audio) + RATE // 10, (first, last, len(audio))
    return loudest_dbfs(audio[first:last])


@pytest.mark.parametrize(
    ("echo_cancellation", "half_duplex", "hears_itself"),
    [(True, False, False), (False, False, True), (False, True, False)],
    ids=["echo-cancelled", "no-protection", "half-duplex"],
)
async def test_the_device_does_not_hear_its_own_voice(
    pulse_rig: PulseRig,  # noqa: F811
    tmp_path: Path,
    models_dir: Path,
    echo_cancellation: bool,
    half_duplex: bool,
    hears_itself: bool,
) -> None:
    """The speaker looped back into the microphone at full level: with the echo canceller (or
    half-duplex) the reply plays out without the server's VAD hearing it; with neither, the
    device's own voice is taken for the user and interrupts the reply."""
    said = mic_wav(tmp_path / "said.wav", say(QUESTION), tail_s=0.2)
    device = {"session": {"echo_cancellation": echo_cancellation, "half_duplex": half_duplex}}
    mic = MonitorTap(pulse_rig.input_device, 48000)
    try:
        async with pulse_chain(
            pulse_rig,
            tmp_path / "chain",
            models_dir,
            reply="speech",
            reply_text=AEC_REPLY,
            device=device,
        ) as (chain, speaker):
            await chain.press()
            await chain.expect(Phase.WAKE, Phase.CONNECTING, Phase.LISTENING)
            load_loopback(pulse_rig)  # after the wake cue (see the test below)
            await played(pulse_rig, said)
            _, speaking, after = await chain.expect(
                Phase.THINKING, Phase.SPEAKING, Phase.LISTENING, timeout=20
            )
            if not hears_itself:
                await chain.expect(Phase.IDLE, timeout=5)
            await mic.until(after.t + 0.3)
    finally:
        mic.close()

    reply_started = event_times(chain, "output_audio_buffer.started")[0]
    false_starts = [
        t for t in event_times(chain, "input_audio_buffer.speech_started") if t > reply_started
    ]
    played_s = 0.01 * len(speaker.audible(speaking.t, after.t))
    echo_dbfs = mic.loudest_dbfs(speaking.t, after.t + 0.3)
    sent_dbfs = model_heard_dbfs(chain, speaking.t, after.t + 0.3)
    print(
        f"echo_cancellation={echo_cancellation} half_duplex={half_duplex}: "
        f"{len(false_starts)} speech_started after the reply began; echo at the mic "
        f"{echo_dbfs:.1f} dBFS, sent to the model {sent_dbfs:.1f} dBFS (VAD at {VAD_ON_DBFS:g}); "
        f"reply audible {played_s:.2f} s, then {after.reason!r}"
    )
    # The loop is real: the reply reaches the microphone far above what the VAD calls speech.
    assert echo_dbfs > VAD_ON_DBFS + 15
    if hears_itself:
        assert false_starts, "the device's own voice never reached the server's VAD"
        assert after.reason == "user speaking"
        assert sent_dbfs > VAD_ON_DBFS
    else:
        assert not false_starts
        assert after.reason == "reply finished"
        assert played_s > 3.0  # the whole reply played
        if half_duplex:
            assert sent_dbfs < -80  # the microphone path was closed
        else:
            # The canceller learns the room on this first reply (aec.py): until it has heard
            # enough of the device's voice the session gets nothing while the speaker plays,
            # then the canceller alone keeps the echo out.
            ((learned, _),) = chain.logs.find("echo canceller has learned the room")
            print(
                f"learned {learned - speaking.t:.2f} s into the reply; sent before "
                f"{model_heard_dbfs(chain, speaking.t, learned):.1f} dBFS, after "
                f"{model_heard_dbfs(chain, learned, after.t + 0.3):.1f} dBFS"
            )
            assert speaking.t < learned < after.t - 2.0  # it carried the last 2 s alone
            assert model_heard_dbfs(chain, speaking.t, learned) < -80
            assert model_heard_dbfs(chain, learned + 0.1, after.t) > -99  # not silenced: cleaned
            # At its loudest moment at least 20 dB of the echo were removed, and what is left
            # is far below what the VAD takes for speech (measured -81 to -92 dBFS here).
            assert sent_dbfs < min(echo_dbfs - 20, VAD_ON_DBFS)


def load_loopback(rig: PulseRig) -> None:
    """From now on, everything the device plays reaches its microphone, at full level."""
    rig.pactl(
        "load-module",
        "module-loopback",
        "source=speaker.monitor",
        "sink=mic",
        f"latency_msec={LOOPBACK_MS}",
        # No rate adaptation: both sinks run on one clock, as a codec's speaker and mic do.
        # Adapting (every 10 s by default) warps the echo against its reference.
        "adjust_time=0",
    )


@pytest.mark.xfail(
    strict=True,
    raises=AssertionError,
    reason="known gap: after a button press the wake cue, heard back by the microphone, goes "
    "into the session unprocessed (the echo canceller starts with the first reply) and the "
    "emulator's energy VAD takes it for speech. Silencing the session while the cue plays "
    "fixes this but loses the words of a user who talks at once, which matters more",
)
async def test_the_wake_cue_heard_back_is_not_taken_for_speech(
    pulse_rig: PulseRig,  # noqa: F811
    tmp_path: Path,
    models_dir: Path,
) -> None:
    """A button press and then nothing said, with the speaker audible at the microphone: the
    conversation should time out unanswered, not answer the wake chime."""
    async with pulse_chain(pulse_rig, tmp_path / "chain", models_dir, reply="speech") as (
        chain,
        _,
    ):
        load_loopback(pulse_rig)
        await chain.press()
        await chain.expect(Phase.WAKE, Phase.CONNECTING, Phase.LISTENING)
        await chain.wait_phase(Phase.IDLE, timeout=15)
    kinds = [e["type"] for e in chain.received()]
    assert "input_audio_buffer.speech_started" not in kinds, chain.describe()
    assert "response.created" not in kinds
