"""The operator's in-memory index of evaluated bindings and the config document it renders."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from gitlab_sts.core.bindingdoc import payload_of, render_entries
from gitlab_sts.operator.evaluation import Context, Evaluation, evaluate, spec_digest

Key = tuple[str, str]
Payload = tuple[dict[str, str], dict[str, bytes], str]


class BindingMemo:
    """Every watched binding's latest evaluation; renders the config once per change, not per binding.

    `version` moves only when the set of ready bindings or their specs change, so status-only
    updates and repeated watch events cost nothing downstream.
    """

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self._entries: dict[Key, Evaluation] = {}
        self.version = 0
        self.seeded = False  # the first full listing is in; until then a write would drop bindings
        self._payload: tuple[int, Payload] | None = None
        self._ready = 0  # kept up to date on every change: counting 10,000 entries per event would cost more
        self.rendered = 0  # ready bindings in the last rendered payload (what a write of it holds)
        self.rendered_generations: dict[str, int] = {}
        self._stale: set[Key] = set()  # evaluated under settings that have changed since

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: object) -> bool:
        return key in self._entries

    def get(self, key: Key) -> Evaluation | None:
        """The latest evaluation of a binding, if known."""
        return self._entries.get(key)

    def all_keys(self) -> list[Key]:
        """Every known binding (a copy: callers remove while iterating)."""
        return list(self._entries)

    def _set(self, key: Key, ev: Evaluation | None) -> Evaluation | None:
        old = self._entries.pop(key, None) if ev is None else self._entries.get(key)
        if ev is not None:
            self._entries[key] = ev
        self._ready += (1 if ev is not None and ev.ready else 0) - (1 if old is not None and old.ready else 0)
        return old

    def evaluate(self, namespace: str, name: str, spec: Any, generation: int) -> Evaluation:
        """Evaluate, reusing the memoised result when generation, spec and settings are unchanged."""
        old = self._entries.get((namespace, name))
        if old is not None and old.generation == generation and old.spec_digest == spec_digest(spec) \
                and (namespace, name) not in self._stale:
            return old
        self._stale.discard((namespace, name))
        return evaluate(namespace, name, spec, generation, self.ctx)

    def rebase(self, ctx: Context) -> None:
        """New settings: every binding is evaluated afresh (its next evaluate() ignores the memoised result)."""
        self.ctx = ctx
        self._stale = set(self._entries)

    def upsert(self, ev: Evaluation) -> bool:
        """Store an evaluation; True when the config document changes."""
        old = self._set(ev.key, ev)
        if _same_config(old, ev):
            return False
        self.version += 1
        return True

    def remove(self, key: Key) -> bool:
        """Forget a binding; True when the config document changes."""
        old = self._set(key, None)
        if old is None or not old.ready:
            return False
        self.version += 1
        return True

    def replace_all(self, evaluations: Iterable[Evaluation]) -> bool:
        """Swap in a full listing (startup and periodic resync); True when the config changes."""
        fresh = {ev.key: ev for ev in evaluations}
        gone = any(ev.ready for key, ev in self._entries.items() if key not in fresh)
        changed = gone or any(not _same_config(self._entries.get(k), ev) for k, ev in fresh.items())
        self._entries = fresh
        self._ready = sum(1 for ev in fresh.values() if ev.ready)
        if changed:
            self.version += 1
        return changed

    def counts(self) -> tuple[int, int]:
        """(ready, rejected)."""
        return self._ready, len(self._entries) - self._ready

    def payload(self) -> Payload:
        """ConfigMap data, binaryData and content digest of the ready bindings (cached per version)."""
        if self._payload is None or self._payload[0] != self.version:
            ready = [ev for _key, ev in sorted(self._entries.items()) if ev.entry is not None]
            self._payload = (self.version, payload_of(*render_entries([ev.entry for ev in ready if ev.entry])))
            self.rendered = len(ready)
            # Which generation of each binding this document holds (the Served condition, operator/served.py).
            self.rendered_generations = {f"{ev.namespace}/{ev.name}": ev.generation for ev in ready}
        return self._payload[1]


def _same_config(old: Evaluation | None, new: Evaluation) -> bool:
    if old is None:
        return not new.ready
    return old.entry == new.entry  # the document entry is all the config holds of a binding
