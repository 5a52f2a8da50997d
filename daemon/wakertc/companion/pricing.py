"""What a session's usage costs: the `[pricing]` table and the usage entries priced by it.

Realtime reports tokens by modality in each `response.done` (`response.usage`); GPT-Live reports
cumulative seconds (`session.usage.updated`, `session.closed`). Each becomes one `UsageEntry`
(the store's ledger row), priced here: Realtime per million tokens of each kind, Live per minute.

The defaults are what we believed OpenAI charged when this was written; we cannot reach its
pricing page from here, so the owner must check https://openai.com/api/pricing and set
`[pricing]` in the companion config.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

MILLION = 1_000_000


@dataclass(frozen=True)
class TokenPrices:
    """USD per 1M tokens of a Realtime model, by modality."""

    input_text: float
    """Uncached text input."""
    input_audio: float
    """Uncached audio input."""
    input_cached_text: float
    """Cached text input."""
    input_cached_audio: float
    """Cached audio input."""
    output_text: float
    """Text output (transcripts of spoken replies included)."""
    output_audio: float
    """Audio output."""


# Check these against https://openai.com/api/pricing: we could not reach it when writing them.
DEFAULT_REALTIME = {
    "gpt-realtime": TokenPrices(4.0, 32.0, 0.4, 0.4, 16.0, 64.0),
    "gpt-realtime-mini": TokenPrices(0.6, 10.0, 0.06, 0.3, 2.4, 20.0),
}
DEFAULT_LIVE = {"gpt-live-1": 0.06, "gpt-live-1.1": 0.06}  # USD per minute


@dataclass(frozen=True)
class Pricing:
    """The `[pricing]` table: per model, what usage costs."""

    realtime: Mapping[str, TokenPrices] = field(default_factory=lambda: dict(DEFAULT_REALTIME))
    """Realtime models: USD per 1M tokens by modality."""
    live_per_minute: Mapping[str, float] = field(default_factory=lambda: dict(DEFAULT_LIVE))
    """GPT-Live models: USD per minute of session."""

    def realtime_cost(self, model: str, usage: RealtimeTokens) -> float:
        """USD for one response's tokens (0 for a model without a price, which is logged by the
        caller once)."""
        prices = self.realtime.get(model)
        if prices is None:
            return 0.0
        uncached_text = max(0, usage.input_text - usage.cached_text)
        uncached_audio = max(0, usage.input_audio - usage.cached_audio)
        total = (
            uncached_text * prices.input_text
            + uncached_audio * prices.input_audio
            + usage.cached_text * prices.input_cached_text
            + usage.cached_audio * prices.input_cached_audio
            + usage.output_text * prices.output_text
            + usage.output_audio * prices.output_audio
        )
        return total / MILLION

    def live_cost(self, model: str, seconds: float) -> float:
        """USD for `seconds` of a GPT-Live session."""
        return self.live_per_minute.get(model, 0.0) * seconds / 60


@dataclass(frozen=True)
class RealtimeTokens:
    """A `response.usage`, by modality (cached = part of the input figures)."""

    input_text: int = 0
    input_audio: int = 0
    cached_text: int = 0
    cached_audio: int = 0
    output_text: int = 0
    output_audio: int = 0

    @classmethod
    def of(cls, usage: Any) -> RealtimeTokens | None:
        """Read upstream's `RealtimeResponseUsage`; None if it is not one."""
        if not isinstance(usage, dict):
            return None
        details_in = _table(usage.get("input_token_details"))
        cached = _table(details_in.get("cached_tokens_details"))
        details_out = _table(usage.get("output_token_details"))
        return cls(
            input_text=_count(details_in.get("text_tokens")),
            input_audio=_count(details_in.get("audio_tokens")),
            cached_text=_count(cached.get("text_tokens")),
            cached_audio=_count(cached.get("audio_tokens")),
            output_text=_count(details_out.get("text_tokens")),
            output_audio=_count(details_out.get("audio_tokens")),
        )


class PricingError(ValueError):
    """A `[pricing]` table that cannot be used; the message names the key."""


TOKEN_KEYS = (
    "input_text", "input_audio", "input_cached_text", "input_cached_audio", "output_text",
    "output_audio",
)  # fmt: skip


def parse_pricing(table: Any) -> Pricing:
    """Read `[pricing]`: `[pricing.realtime.MODEL]` with the six `TOKEN_KEYS` (USD per 1M
    tokens) and `[pricing.live]` MODEL = USD per minute, laid over the defaults."""
    if not isinstance(table, dict):
        raise PricingError("pricing: expected a table")
    unknown = set(table) - {"realtime", "live"}
    if unknown:
        raise PricingError(f"pricing.{sorted(unknown)[0]}: unknown key (known: live, realtime)")
    realtime = dict(DEFAULT_REALTIME)
    models = table.get("realtime", {})
    if not isinstance(models, dict):
        raise PricingError("pricing.realtime: expected a table of models")
    for model, prices in models.items():
        where = f"pricing.realtime.{model}"
        if not isinstance(prices, dict):
            raise PricingError(f"{where}: expected a table with {', '.join(TOKEN_KEYS)}")
        missing = [k for k in TOKEN_KEYS if k not in prices]
        extra = sorted(set(prices) - set(TOKEN_KEYS))
        if missing or extra:
            raise PricingError(
                f"{where}.{(missing or extra)[0]}: "
                + ("missing" if missing else "unknown key")
                + f" (the keys are {', '.join(TOKEN_KEYS)}, USD per 1M tokens)"
            )
        realtime[model] = TokenPrices(**{k: _price(prices[k], f"{where}.{k}") for k in TOKEN_KEYS})
    live = dict(DEFAULT_LIVE)
    per_minute = table.get("live", {})
    if not isinstance(per_minute, dict):
        raise PricingError("pricing.live: expected a table of MODEL = USD per minute")
    for model, price in per_minute.items():
        live[model] = _price(price, f"pricing.live.{model}")
    return Pricing(realtime=realtime, live_per_minute=live)


def _price(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 10_000:
        raise PricingError(f"{where}: expected a number 0..10000 (USD), got {value!r}")
    return float(value)


def _table(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _count(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0
