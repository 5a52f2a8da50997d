"""Writing one response: the item, content part, transcript and audio events, and tool calls.

`ResponseWriter.write` streams what a turn says (audio at real-time pace, a little ahead of
playout, with transcript deltas keeping up) and the function call a script asks for. It does not
decide when a response starts, ends or is cancelled: the engine does, and cancels the task; then
`cut_short` closes what was being written, as upstream does: a function call whose arguments were
streaming still gets `response.function_call_arguments.done` (with the arguments so far) and
`response.output_item.done` (status `incomplete`). A response that reaches its
`max_output_tokens` (about 10 tokens a second of audio, 4 characters a token of text) stops where
it is and raises `OutOfTokens`; the engine ends it `incomplete`.
"""

from __future__ import annotations

import asyncio
import copy
import json
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .audio_buffer import RATE
from .conversation import Conversation
from .events import (
    assistant_item,
    event,
    function_call_item,
    new_id,
    response_object,
)
from .playout import ReplyTrack
from .replies import Reply
from .script import FunctionCall, ScriptTurn
from .usage import Tokens, audio_tokens, response_usage, text_tokens

log = logging.getLogger(__name__)

LEAD_S = 0.2  # how far generation runs ahead of playout
FEED_STEP_S = 0.02
START_WAIT_S = 0.5  # wait this long for the first frame to leave before sending transcript

Send = Callable[[dict[str, Any]], None]
ARGUMENT_CHUNKS = 8  # deltas a streamed function call's arguments come in


class OutOfTokens(Exception):
    """The response reached its `max_output_tokens`; what was written so far is closed."""


@dataclass
class Response:
    """One response: its turn, what it produced so far, and whether it is over."""

    id: str
    turn: ScriptTurn
    modalities: list[str]
    metadata: Any
    input_tokens: Tokens
    """The context when the response started (`usage.context_tokens`)."""
    cached_tokens: Tokens
    output: list[dict[str, Any]] = field(default_factory=list)
    started: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None
    audio_ms: float = 0.0
    text: str = ""
    done: bool = False
    max_tokens: int | None = None
    """`max_output_tokens` of this response; None = "inf"."""
    call_tokens: int = 0

    def tokens_left(self) -> int | None:
        """Output tokens this response may still produce (None: no limit)."""
        if self.max_tokens is None:
            return None
        return max(0, self.max_tokens - self.output_tokens().total)

    def output_tokens(self) -> Tokens:
        """What it produced so far: audio fed, transcript or text, function call arguments."""
        return Tokens(
            text=text_tokens(self.text) + self.call_tokens, audio=audio_tokens(self.audio_ms)
        )


class ResponseWriter:
    """Sends the events (and feeds the audio) of a response's output items."""

    def __init__(self, *, send: Send, track: ReplyTrack, conversation: Conversation) -> None:
        self._send = send
        self._track = track
        self._conversation = conversation

    async def write(self, response: Response, reply: Reply | None, declared: set[str]) -> None:
        """Stream the spoken/text message (if any), then the function call (if any)."""
        if reply is not None:
            await self._message(response, reply)
        if response.turn.call is not None:
            await self._call(response, response.turn.call, declared)

    def cut_short(self, response: Response) -> None:
        """The response was cancelled: close the function call whose arguments were streaming."""
        for index, item in enumerate(response.output):
            if item.get("type") == "function_call" and item.get("status") == "in_progress":
                self._close_call(response, index, item, "incomplete")

    async def _message(self, response: Response, reply: Reply) -> None:
        audio_mode = response.modalities == ["audio"]
        index = len(response.output)
        item_id = new_id("item")
        item = assistant_item(item_id, status="in_progress")
        response.output.append(item)
        previous = self._conversation.append(item)
        where = {"response_id": response.id, "item_id": item_id, "output_index": index}
        self._send(
            event(
                "response.output_item.added",
                response_id=response.id,
                output_index=index,
                item=copy.deepcopy(item),
            )
        )
        self._send(
            event("conversation.item.added", previous_item_id=previous, item=copy.deepcopy(item))
        )
        part: dict[str, Any] = (
            {"type": "audio", "transcript": ""} if audio_mode else {"type": "text", "text": ""}
        )
        self._send(event("response.content_part.added", **where, content_index=0, part=part))
        words = re.findall(r"\S+\s*", reply.transcript) or [reply.transcript]
        cut = False
        if audio_mode:
            cut = await self._play(response, reply, words, where)
            content = {"type": "output_audio", "transcript": response.text}
            self._send(event("response.output_audio.done", **where, content_index=0))
            self._send(
                event(
                    "response.output_audio_transcript.done",
                    **where,
                    content_index=0,
                    transcript=response.text,
                )
            )
            part = {"type": "audio", "transcript": response.text}
        else:
            for word in words:
                left = response.tokens_left()
                grown = text_tokens(response.text + word) - text_tokens(response.text)
                if left is not None and grown > left:
                    cut = True
                    break
                response.text += word
                self._send(
                    event("response.output_text.delta", **where, content_index=0, delta=word)
                )
            content = {"type": "output_text", "text": response.text}
            self._send(
                event("response.output_text.done", **where, content_index=0, text=response.text)
            )
            part = {"type": "text", "text": response.text}
        self._send(event("response.content_part.done", **where, content_index=0, part=part))
        item["status"] = "incomplete" if cut else "completed"
        item["content"] = [content]
        self._send(
            event("conversation.item.done", previous_item_id=previous, item=copy.deepcopy(item))
        )
        self._send(
            event(
                "response.output_item.done",
                response_id=response.id,
                output_index=index,
                item=copy.deepcopy(item),
            )
        )
        if cut:
            raise OutOfTokens

    async def _play(
        self, response: Response, reply: Reply, words: list[str], where: dict[str, Any]
    ) -> bool:
        """Feed the reply audio in real time, with transcript deltas keeping pace.

        Returns True when the response ran out of tokens before the end of the reply.
        """
        loop = asyncio.get_running_loop()
        audio = reply.audio
        total = len(audio)
        left = response.tokens_left()
        needed = audio_tokens(reply.duration_ms) + text_tokens(reply.transcript)
        cut = left is not None and needed > left
        if cut:
            assert left is not None
            total = total * left // needed  # audio and transcript shortened alike
            words = words[: len(words) * total // max(len(audio), 1)]
            while words and audio_tokens(total * 1000 / RATE) + text_tokens("".join(words)) > left:
                words.pop()
        lead = int(LEAD_S * RATE)
        fed = min(total, lead)
        self._track.feed(response.id, audio[:fed])
        response.audio_ms = fed * 1000 / RATE
        try:
            # Upstream order: output_audio_buffer.started comes before the transcript deltas.
            await asyncio.wait_for(response.started.wait(), START_WAIT_S)
        except TimeoutError:
            log.debug("reply audio of %s not pulled yet; streaming anyway", response.id)
        began = loop.time()
        emitted = 0
        while True:
            due = min(total, lead + int((loop.time() - began) * RATE))
            if due > fed:
                self._track.feed(response.id, audio[fed:due])
                fed = due
                response.audio_ms = fed * 1000 / RATE  # generated so far, counted if cut
            want = len(words) if fed >= total else len(words) * fed // max(total, 1)
            while emitted < want:
                response.text += words[emitted]
                self._send(
                    event(
                        "response.output_audio_transcript.delta",
                        **where,
                        content_index=0,
                        delta=words[emitted],
                    )
                )
                emitted += 1
            if fed >= total:
                return cut
            await asyncio.sleep(FEED_STEP_S)

    async def _call(self, response: Response, call: FunctionCall, declared: set[str]) -> None:
        """Stream a function call's arguments (over `call.stream_s`), then close the item."""
        if call.name not in declared:
            log.warning("script calls %r, which the session does not declare", call.name)
        index = len(response.output)
        item_id = new_id("item")
        call_id = new_id("call")
        arguments = json.dumps(call.arguments)
        item = function_call_item(
            item_id, call_id=call_id, name=call.name, arguments="", status="in_progress"
        )
        response.output.append(item)
        previous = self._conversation.append(item)
        where = {"response_id": response.id, "item_id": item_id, "output_index": index}
        self._send(
            event(
                "response.output_item.added",
                response_id=response.id,
                output_index=index,
                item=copy.deepcopy(item),
            )
        )
        self._send(
            event("conversation.item.added", previous_item_id=previous, item=copy.deepcopy(item))
        )
        left = response.tokens_left()
        cut = left is not None and text_tokens(arguments) > left
        if cut:
            assert left is not None
            arguments = arguments[: left * 4]
        step = -(-len(arguments) // ARGUMENT_CHUNKS) or 1
        for start in range(0, len(arguments), step):
            if start and call.stream_s:
                await asyncio.sleep(call.stream_s / ARGUMENT_CHUNKS)
            delta = arguments[start : start + step]
            item["arguments"] += delta
            response.call_tokens = text_tokens(item["arguments"])
            self._send(
                event(
                    "response.function_call_arguments.delta", **where, call_id=call_id, delta=delta
                )
            )
        self._close_call(response, index, item, "incomplete" if cut else "completed")
        if cut:
            raise OutOfTokens

    def _close_call(
        self, response: Response, index: int, item: dict[str, Any], status: str
    ) -> None:
        item["status"] = status
        where = {"response_id": response.id, "item_id": item["id"], "output_index": index}
        self._send(
            event(
                "response.function_call_arguments.done",
                **where,
                call_id=item["call_id"],
                name=item["name"],
                arguments=item["arguments"],
            )
        )
        previous = self._conversation.previous_id(item["id"])
        self._send(
            event("conversation.item.done", previous_item_id=previous, item=copy.deepcopy(item))
        )
        self._send(
            event(
                "response.output_item.done",
                response_id=response.id,
                output_index=index,
                item=copy.deepcopy(item),
            )
        )


def response_view(
    response: Response,
    status: Any,
    *,
    session: dict[str, Any],
    conversation_id: str,
    reason: str | None = None,
) -> dict[str, Any]:
    """The `response` object for `response.created` (in_progress) or `response.done`."""
    done = status != "in_progress"
    return response_object(
        response.id,
        status=status,
        session=session,
        conversation_id=conversation_id,
        output=copy.deepcopy(response.output) if done else [],
        modalities=response.modalities,
        reason=reason,
        metadata=response.metadata,
        usage=(
            response_usage(response.input_tokens, response.cached_tokens, response.output_tokens())
            if done
            else None
        ),
    )
