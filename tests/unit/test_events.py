"""The event ring: tuples kept, dicts shown, and what a re-exec carries comes back whole."""

from __future__ import annotations

import asyncio

from pikud.events import Entry, EventLog


def test_the_last_events_are_shown_as_dicts_by_app_and_by_kind() -> None:
    log = EventLog(keep=3)
    log.emit("a", "a:web.1", "start", "a:web.1 started")
    log.emit("b", None, "deploy", "b deployed")
    log.emit("a", "a:web.1", "crashed", "a:web.1 exited 1")
    log.emit("a", None, "deploy", "a deployed")           # the first one falls out
    assert [e["message"] for e in log.last(10)] == ["b deployed", "a:web.1 exited 1",
                                                    "a deployed"]
    shown = log.last(1, app="a", kinds=("crashed",))
    assert shown == [{"time": shown[0]["time"], "app": "a", "process": "a:web.1",
                      "event": "crashed", "message": "a:web.1 exited 1"}]
    assert log.last(0) == [] and log.last(5, app="c") == []
    assert all(isinstance(entry, Entry) for entry in log.recent)


def test_followers_get_each_event_and_a_full_follower_misses_them() -> None:
    async def main() -> tuple[list[str], int]:
        log = EventLog()
        queue = log.subscribe()
        for n in range(1001):                   # a follower's queue holds 1000
            log.emit("a", None, "note", f"n{n}")
        log.unsubscribe(queue)
        log.emit("a", None, "note", "after")
        first = [queue.get_nowait()["message"] for _ in range(2)]
        return first, queue.qsize()

    assert asyncio.run(main()) == (["n0", "n1"], 998)


def test_a_reexec_record_restores_the_events_and_leaves_out_what_does_not_fit() -> None:
    old = EventLog()
    old.emit("a", "a:web.1", "start", "started")
    old.emit("", None, "error", "re-exec: refused")
    carried = old.last(len(old.recent))
    new = EventLog()
    new.restore([*carried, {"app": "x"}, {**carried[0], "added_later": 1}])
    assert new.last(10) == [*carried, carried[0]]     # a field it does not know is dropped
    new.keep(1)
    assert [e["message"] for e in new.last(10)] == ["started"]
