"""Keep full garbage collections from walking the compiled bindings (issue #6: reloads without pausing requests).

A worker holding 10,000 compiled bindings has ~450,000 objects the cyclic collector tracks. Reloads
allocate more, which makes CPython run a full (generation 2) collection every few reloads, one C call that
walks the whole heap while holding the GIL (~130-175 ms typically, up to 460 ms on a busy machine) during
which no request thread runs (bench/bench_gc.py, bench/README.md "GC pauses with 10,000 bindings").

`gc.freeze()` moves every tracked object to a permanent generation that collections never walk. Frozen
objects are still freed by reference counting, and compiled bindings, indexes and snapshots form no
reference cycles (tests/service/test_gc_policy.py checks it), so bindings a reload replaces are freed as
before. What must not be frozen is a garbage cycle (each request leaves some: werkzeug's Request and
its environ, the URL matcher's closure): frozen, it is never freed. So a freeze is preceded by a full
collection, which walks only what is not frozen yet. Objects that a request in flight holds at that
moment and that become a garbage cycle afterwards are frozen all the same: the bench measured ~20-30
objects (a few KiB) per freeze with two busy request threads.

To keep that small, a reload freezes only once the objects outside the permanent generation pass
REFREEZE_AT: after many bindings were recompiled in one or several reloads, not after each edit
(an edit of one of 10,000 bindings leaves ~12,000 unfrozen objects, the new index, then frees them on
the next reload). Full collections then walk at most about REFREEZE_AT objects. A reload that recompiles
every binding still pays for collecting its ~370,000 new objects: the young collection after the load
(~110-180 ms, with or without this policy) and here the collection before the freeze (~60-75 ms).

Off unless `enable()` is called (once per worker, after the app loaded: gunicorn's post_worker_init).
Freezing is process-wide, so building a ConfigState (tests, CLI checks) does not turn it on.
"""

from __future__ import annotations

import gc
import threading

# Objects outside the permanent generation after a reload above which the reload freezes them. A full
# collection walking 50,000 objects takes ~20 ms (~165 ms for the ~460,000 of 10,000 unfrozen bindings).
REFREEZE_AT = 50_000

_lock = threading.Lock()
_enabled = False


def enable() -> None:
    """Collect once and freeze everything alive; from then on reloads freeze what they add past REFREEZE_AT."""
    global _enabled
    with _lock:
        _enabled = True
        _collect_and_freeze()


def disable() -> None:
    """Stop freezing and hand every frozen object back to the collector (tests)."""
    global _enabled
    with _lock:
        _enabled = False
        gc.unfreeze()


def after_reload() -> None:
    """Called by ConfigState after a reload read a changed file: freeze once enough new objects accumulated."""
    if not _enabled:
        return
    with _lock:
        # gc.get_objects() lists only the generations collections walk (not the permanent one): ~1 ms
        # for the ~12,000 objects an ordinary reload leaves there.
        if _enabled and len(gc.get_objects()) > REFREEZE_AT:
            _collect_and_freeze()


def _collect_and_freeze() -> None:
    # Collect first so that no garbage cycle is frozen: it would never be freed.
    gc.collect()
    gc.freeze()
