"""A GPT-Live session's data-channel permissions (`session.client.data_channel`).

A WebRTC frontend is untrusted: the session's creator may limit the client events it may send
(`allowed_client_events`, event type names) and the server events it receives
(`allowed_server_events`, selectors `{type}`, or `{type: "response.event", response_event}` for
one kind of nested Responses event); omitted or `"all"` allows everything (SDK
`DataChannelConfig`). Upstream then withholds every other server event from the channel, answers
every other client event with an `error` and nothing else, and tells the frontend with
`info {code: "data_channel_permissions"}` after `session.started` (GPT_LIVE_PROTOCOL.md 3).

What upstream leaves unsaid, the emulator decides the strict way, so that a client cannot come
to depend on the lenient way: the filter applies to every server event (`session.started`,
`error` and that `info` included; nothing says they are exempt), and the lists may only name
events that exist (the SDK's Live unions, and the Responses streaming events for
`response_event`), so a misspelt permission fails at creation instead of silently withholding.
"""

from __future__ import annotations

import typing
from dataclasses import dataclass
from typing import Any

from .session import SessionError

PARAM = "session.client.data_channel"
# Not documented: the code of the `error` for a client event outside `allowed_client_events`
# (unconfirmed; chosen strict and plain). Clients must not depend on it.
NOT_PERMITTED = "client_event_not_permitted"
INFO_CODE = "data_channel_permissions"
INFO_MESSAGE = "The frontend data channel is configured with restricted event permissions."


@dataclass(frozen=True)
class DataChannelPermissions:
    """What one session's data channel may carry; None means everything."""

    client: frozenset[str] | None = None
    server: frozenset[str] | None = None
    response_events: frozenset[str] | None = None  # nested kinds of `response.event`

    @classmethod
    def of(cls, session: dict[str, Any]) -> DataChannelPermissions:
        """The permissions of a session checked by `check_data_channel`."""
        client_config = session.get("client")
        channel = client_config.get("data_channel") if isinstance(client_config, dict) else None
        if not isinstance(channel, dict):
            return cls()
        client_events = channel.get("allowed_client_events", "all")
        server_events = channel.get("allowed_server_events", "all")
        client = None if client_events == "all" else frozenset(client_events)
        if server_events == "all":
            return cls(client=client)
        plain = frozenset(s["type"] for s in server_events if s["type"] != "response.event")
        nested = frozenset(
            s["response_event"] for s in server_events if s["type"] == "response.event"
        )
        return cls(client=client, server=plain, response_events=nested)

    @property
    def restricted(self) -> bool:
        """Whether anything is withheld or refused (then the frontend is told, with `info`)."""
        return self.client is not None or self.server is not None

    def allows_client(self, kind: str) -> bool:
        """Whether the frontend may send a client event of type `kind`."""
        return self.client is None or kind in self.client

    def allows_server(self, server_event: dict[str, Any]) -> bool:
        """Whether `server_event` may go out on the data channel."""
        if self.server is None:
            return True
        kind = server_event.get("type")
        if kind != "response.event":
            return kind in self.server
        nested = server_event.get("event")
        nested_kind = nested.get("type") if isinstance(nested, dict) else None
        return self.response_events is not None and nested_kind in self.response_events


def check_data_channel(session: dict[str, Any]) -> None:
    """Raise SessionError for permissions upstream would refuse (the request's types are
    already checked against the SDK's TypedDicts: this checks what they cannot say)."""
    client_config = session.get("client")
    channel = client_config.get("data_channel") if isinstance(client_config, dict) else None
    if not isinstance(channel, dict):
        return
    client_events = channel.get("allowed_client_events", "all")
    if client_events != "all":
        known = live_event_types("client")
        for index, kind in enumerate(client_events):
            _known(kind, known, f"{PARAM}.allowed_client_events[{index}]", "Live client event")
    server_events = channel.get("allowed_server_events", "all")
    if server_events == "all":
        return
    known_server, known_nested = live_event_types("server"), responses_event_types()
    for index, selector in enumerate(server_events):
        where = f"{PARAM}.allowed_server_events[{index}]"
        _known(selector["type"], known_server, f"{where}.type", "Live server event")
        # The SDK: `response_event` is "required when type is 'response.event'; forbidden for
        # other event types". Which codes upstream uses for the two is not documented.
        nested = selector.get("response_event")
        if selector["type"] == "response.event":
            if nested is None:
                raise SessionError(
                    f"Missing required parameter: '{where}.response_event'.",
                    f"{where}.response_event",
                    "missing_required_parameter",
                )
            _known(nested, known_nested, f"{where}.response_event", "Responses streaming event")
        elif nested is not None:
            raise SessionError(
                f"Invalid parameter: '{where}.response_event' is only allowed when "
                "'type' is 'response.event'.",
                f"{where}.response_event",
            )


def live_event_types(side: str) -> frozenset[str]:
    """Type names of the SDK's Live client events (`client`), or of every server event the
    data channel may carry when permitted (`server`: `ConnectServerEvent`, which also has
    `session.paused` / `session.resumed`)."""
    from openai.types.live import ClientEvent, ConnectServerEvent

    return _union_types(ClientEvent if side == "client" else ConnectServerEvent)


def responses_event_types() -> frozenset[str]:
    """Type names of the Responses streaming events (what `response.event` nests)."""
    from openai.types.responses import ResponseStreamEvent

    return _union_types(ResponseStreamEvent)


def _union_types(union: Any) -> frozenset[str]:
    members = typing.get_args(typing.get_args(union)[0])
    return frozenset(typing.get_args(m.model_fields["type"].annotation)[0] for m in members)


def _known(kind: str, known: frozenset[str], param: str, what: str) -> None:
    # Unconfirmed that upstream refuses unknown names; refusing them is the strict side.
    if kind not in known:
        raise SessionError(f"Invalid value: '{kind}' is not a {what} type.", param)
