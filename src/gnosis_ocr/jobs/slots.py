"""Fair shares of an engine's pages in flight among the jobs reading with it.

An engine keeps its device full with ``capacity`` pages in flight; more only wait inside it. ``FairSlots`` hands
those places out one at a time: a reader asks for one (``want``) and is told on its own queue when it has it. A free
place goes to the asker holding the fewest, oldest ask first, so a 1-page job submitted after a 500-page one gets
the very next place that frees up, and jobs running together share the device evenly.

Accounting is per owner, so ``release_all`` returns everything an owner holds (or was granted and not yet used)
when its reading ends for any reason: a reader that stops never leaks a place.
"""

from __future__ import annotations

import itertools
import threading
from collections import Counter
from typing import Protocol


class Inbox(Protocol):
    def put(self, item: object) -> None: ...


SLOT = "slot"  # what an owner's inbox receives when a place is granted


class FairSlots:
    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        self.capacity = capacity
        self._lock = threading.Lock()
        self._held: Counter[str] = Counter()
        self._asks: dict[str, tuple[int, Inbox]] = {}  # owner -> (ask order, inbox); one open ask per owner
        self._order = itertools.count()

    def __repr__(self) -> str:
        with self._lock:
            return f"FairSlots({sum(self._held.values())}/{self.capacity} held, {len(self._asks)} waiting)"

    @property
    def in_use(self) -> int:
        with self._lock:
            return sum(self._held.values())

    def held(self, owner: str) -> int:
        with self._lock:
            return self._held[owner]

    def want(self, owner: str, inbox: Inbox) -> None:
        """Ask for one place; ``SLOT`` arrives in ``inbox`` when it is ``owner``'s. A second ask before the first
        is granted changes nothing."""
        with self._lock:
            if owner not in self._asks:
                self._asks[owner] = (next(self._order), inbox)
            self._grant()

    def release(self, owner: str) -> None:
        """Give back one place ``owner`` holds."""
        with self._lock:
            if self._held[owner] > 0:
                self._held[owner] -= 1
                if not self._held[owner]:
                    del self._held[owner]
            self._grant()

    def release_all(self, owner: str) -> None:
        """Give back every place ``owner`` holds and drop its open ask."""
        with self._lock:
            self._held.pop(owner, None)
            self._asks.pop(owner, None)
            self._grant()

    def _grant(self) -> None:
        while self._asks and sum(self._held.values()) < self.capacity:
            owner = min(self._asks, key=lambda o: (self._held[o], self._asks[o][0]))
            _, inbox = self._asks.pop(owner)
            self._held[owner] += 1
            inbox.put(SLOT)
