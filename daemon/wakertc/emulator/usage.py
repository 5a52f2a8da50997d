"""Token usage of Realtime responses: upstream's shape, the emulator's own (deterministic) counts.

OpenAI does not publish how it tokenises audio; these figures are ours, chosen so that a backend
that meters a call (the companion's ledger) can be checked to the token against what was sent:

- audio: 10 tokens a second, `floor(ms / 100)` per stretch of audio; a stretch is one committed
  user turn (its samples, as the input buffer committed them), one assistant reply (the audio fed
  to the track, so a cancelled reply counts what left before the cut), or one client-created
  `input_audio` part (its PCM16 24 kHz bytes);
- text: `max(1, len(text) // 4)` for non-empty text (4 characters a token), 0 for none;
- input of a response = the whole context when it starts: the session's instructions (text), then
  every conversation item in order: text parts as text, audio parts as audio (their transcripts
  are not counted again), function calls (their arguments) and outputs (their output) as text;
- cached input = what of that context the previous response of the session already had as input
  (per modality, at most the current figure): the prompt prefix a cache would hold;
- output = the reply's audio, its transcript or text, and any function call's arguments.

`input_tokens = text + audio` (cached included), `output_tokens` likewise, `total_tokens` their sum:
the shape of the SDK's `RealtimeResponseUsage`.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

INPUT_RATE = 24000  # client-created input_audio is PCM16 mono 24 kHz


@dataclass(frozen=True)
class Tokens:
    """A count by modality."""

    text: int = 0
    audio: int = 0

    @property
    def total(self) -> int:
        """Text and audio together."""
        return self.text + self.audio

    def __add__(self, other: Tokens) -> Tokens:
        return Tokens(self.text + other.text, self.audio + other.audio)

    def capped(self, limit: Tokens) -> Tokens:
        """Per modality, at most `limit`."""
        return Tokens(min(self.text, limit.text), min(self.audio, limit.audio))


def audio_tokens(ms: float) -> int:
    """Tokens of `ms` of audio: 10 a second."""
    return int(ms / 100)


def text_tokens(text: str) -> int:
    """Tokens of some text: 4 characters each, at least one for any text."""
    return max(1, len(text) // 4) if text else 0


def context_tokens(
    instructions: str, items: Iterable[dict[str, Any]], audio_ms: Callable[[str], float]
) -> Tokens:
    """The input a response starting now has: instructions and every item, in order.

    `audio_ms(item_id)` is how much audio an item that carries it (a committed user turn, an
    assistant reply) holds.
    """
    count = Tokens(text=text_tokens(instructions))
    for item in items:
        count = count + item_tokens(item, audio_ms)
    return count


def item_tokens(item: dict[str, Any], audio_ms: Callable[[str], float]) -> Tokens:
    """Tokens one conversation item adds to the context."""
    kind = item.get("type")
    if kind == "function_call":
        return Tokens(text=text_tokens(str(item.get("arguments") or "")))
    if kind == "function_call_output":
        return Tokens(text=text_tokens(str(item.get("output") or "")))
    count = Tokens()
    audio_counted = False
    for part in item.get("content") or []:
        if not isinstance(part, dict):
            continue
        part_type = part.get("type")
        if part_type in ("input_text", "output_text", "text"):
            count = count + Tokens(text=text_tokens(str(part.get("text") or "")))
        elif part_type in ("input_audio", "output_audio", "audio"):
            if isinstance(part.get("audio"), str):
                count = count + Tokens(audio=audio_tokens(_pcm24_ms(part["audio"])))
            elif not audio_counted:
                count = count + Tokens(audio=audio_tokens(audio_ms(str(item.get("id")))))
                audio_counted = True
    return count


def response_usage(input_: Tokens, cached: Tokens, output: Tokens) -> dict[str, Any]:
    """The `usage` object of a finished response (`RealtimeResponseUsage`)."""
    return {
        "total_tokens": input_.total + output.total,
        "input_tokens": input_.total,
        "output_tokens": output.total,
        "input_token_details": {
            "text_tokens": input_.text,
            "audio_tokens": input_.audio,
            "image_tokens": 0,
            "cached_tokens": cached.total,
            "cached_tokens_details": {
                "text_tokens": cached.text,
                "audio_tokens": cached.audio,
                "image_tokens": 0,
            },
        },
        "output_token_details": {"text_tokens": output.text, "audio_tokens": output.audio},
    }


def _pcm24_ms(audio: str) -> float:
    try:
        size = len(base64.b64decode(audio, validate=True))
    except (binascii.Error, ValueError):
        return 0.0
    return size / 2 * 1000 / INPUT_RATE
