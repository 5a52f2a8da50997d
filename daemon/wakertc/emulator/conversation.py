"""The conversation: the ordered items of one session (messages, function calls and outputs)."""

from __future__ import annotations

from typing import Any


class Conversation:
    """Items in order; each has a unique `id`."""

    def __init__(self) -> None:
        self.items: list[dict[str, Any]] = []

    def last_id(self) -> str | None:
        """The id of the newest item (the `previous_item_id` of the next one)."""
        return str(self.items[-1]["id"]) if self.items else None

    def previous_id(self, item_id: str) -> str | None:
        """The id of the item before `item_id` (None when it is first or gone)."""
        ids = [item.get("id") for item in self.items]
        if item_id not in ids:
            return None
        index = ids.index(item_id)
        return str(ids[index - 1]) if index else None

    def find(self, item_id: Any) -> dict[str, Any] | None:
        """The item with this id, if any."""
        return next((item for item in self.items if item.get("id") == item_id), None)

    def append(self, item: dict[str, Any]) -> str | None:
        """Add at the end; returns the previous item's id."""
        previous = self.last_id()
        self.items.append(item)
        return previous

    def insert_after(self, item: dict[str, Any], previous: str | None) -> str | None:
        """Add after `previous` ("root" = first, None = at the end); returns the id before it."""
        if previous is None:
            return self.append(item)
        if previous == "root":
            self.items.insert(0, item)
            return None
        index = next(i for i, it in enumerate(self.items) if it.get("id") == previous)
        self.items.insert(index + 1, item)
        return previous

    def remove(self, item: dict[str, Any]) -> None:
        """Delete an item."""
        self.items.remove(item)
