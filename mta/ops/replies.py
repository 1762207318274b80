"""The last replies that were not 2xx, per destination (SPEC §9: `mta status DESTINATION`):
what a receiver is answering now, with when and which host, for the operator who asks why
mail waits. Ten per destination, for the 10,000 destinations that failed most recently: a
few megabytes at worst."""

from __future__ import annotations

from collections import OrderedDict, deque

KEPT = 10  # replies per destination
DESTINATIONS = 10_000  # destinations remembered, least recently failed forgotten first


class LastReplies:
    def __init__(self) -> None:
        self._by_key: OrderedDict[str, deque] = OrderedDict()

    def note(self, key: str, now: float, phase: str, code: int | None, text: str, mx: str | None,
             ip: str | None) -> None:
        replies = self._by_key.get(key)
        if replies is None:
            replies = self._by_key[key] = deque(maxlen=KEPT)
            if len(self._by_key) > DESTINATIONS:
                self._by_key.popitem(last=False)
        else:
            self._by_key.move_to_end(key)
        replies.append((now, phase, code, text[:512], mx, ip))

    def of(self, key: str) -> list[dict]:
        """Newest first."""
        return [{"time": t, "phase": phase, "code": code, "text": text, "mx": mx, "ip": ip}
                for t, phase, code, text, mx, ip in reversed(self._by_key.get(key, ()))]
