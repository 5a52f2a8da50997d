"""The calls the companion makes upstream: `POST /v1/realtime/client_secrets` (a key for a
Realtime session) and `POST /v1/live/sessions` (a GPT-Live session, the device's offer relayed).
Neither is retried: each Live creation is billed.

Exceptions::

    UpstreamError             no key came back (`status` is the upstream HTTP status, if any)
     +-- UpstreamTimeout      upstream did not answer within the configured time
"""

from __future__ import annotations

from typing import Any

import httpx

from .config import UpstreamSettings

MINT_PATH = "/v1/realtime/client_secrets"
LIVE_PATH = "/v1/live/sessions"


class UpstreamError(Exception):
    """Upstream did not give us a key."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class UpstreamTimeout(UpstreamError):
    """Upstream did not answer in time."""


class UpstreamClient:
    """Mints ephemeral keys with the standard key; one connection pool for the server's life."""

    def __init__(
        self,
        settings: UpstreamSettings,
        api_key: str,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._timeout = settings.timeout_s
        self._client = httpx.AsyncClient(
            base_url=settings.url,
            transport=transport,
            timeout=httpx.Timeout(settings.timeout_s),
            headers={"Authorization": f"Bearer {api_key}"},
        )

    async def mint(self, session: dict[str, Any], seconds: int) -> dict[str, Any]:
        """Mint one key; returns upstream's `{value, expires_at, session}`."""
        body = {"expires_after": {"anchor": "created_at", "seconds": seconds}, "session": session}
        try:
            response = await self._client.post(MINT_PATH, json=body)
        except httpx.TimeoutException as exc:
            raise UpstreamTimeout(f"upstream did not answer within {self._timeout:g} s") from exc
        except httpx.HTTPError as exc:
            raise UpstreamError(f"upstream unreachable: {exc or type(exc).__name__}") from exc
        if response.status_code != 200:
            raise UpstreamError(
                f"upstream answered {response.status_code}: {_message(response)}",
                response.status_code,
            )
        try:
            data = response.json()
            value, expires_at = data["value"], data["expires_at"]
        except (ValueError, KeyError, TypeError) as exc:
            raise UpstreamError("upstream answered 200 with an unexpected body", 200) from exc
        if not isinstance(value, str) or not value or not isinstance(expires_at, int | float):
            raise UpstreamError("upstream answered 200 without a usable key", 200)
        session_out = data.get("session")
        return {
            "value": value,
            "expires_at": int(expires_at),
            "session": session_out if isinstance(session_out, dict) else session,
        }

    async def create_live(self, session: dict[str, Any], sdp: str) -> dict[str, str]:
        """Create one Live session with the device's offer; returns `{id, sdp}` (the answer)."""
        body = {"session": session, "transport": {"type": "webrtc", "sdp": sdp}}
        try:
            response = await self._client.post(LIVE_PATH, json=body)
        except httpx.TimeoutException as exc:
            raise UpstreamTimeout(f"upstream did not answer within {self._timeout:g} s") from exc
        except httpx.HTTPError as exc:
            raise UpstreamError(f"upstream unreachable: {exc or type(exc).__name__}") from exc
        if response.status_code != 201:
            raise UpstreamError(
                f"upstream answered {response.status_code}: {_message(response)}",
                response.status_code,
            )
        try:
            data = response.json()
            session_id, answer = data["session"]["id"], data["transport"]["sdp"]
        except (ValueError, KeyError, TypeError) as exc:
            raise UpstreamError("upstream answered 201 with an unexpected body", 201) from exc
        if not isinstance(session_id, str) or not isinstance(answer, str) or not answer:
            raise UpstreamError("upstream answered 201 without a session id and answer", 201)
        return {"id": session_id, "sdp": answer}

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self._client.aclose()


def _message(response: httpx.Response) -> str:
    try:
        error = response.json()["error"]
        code = f" ({error['code']})" if error.get("code") else ""
        return f"{str(error['message'])[:200]}{code}"
    except (ValueError, KeyError, TypeError, AttributeError):
        return response.reason_phrase or "no details"
