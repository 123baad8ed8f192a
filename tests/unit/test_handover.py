"""The handover record survives its transport unchanged (a real memfd, no daemon)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pikud.handover import (
    ENV,
    AppRecord,
    CronRecord,
    HandoverError,
    Record,
    SlotRecord,
    receive,
    send,
    withdraw,
)
from pikud.limits import Limits
from pikud.procman.policy import RestartPolicy
from pikud.procman.process import ProcessSpec


def record(pipe: int, listener: int, control: int) -> Record:
    spec = ProcessSpec("shop:web.1", "web", 1, "exec server", (("A", "1"), ("B", "x y")),
                       Path("/srv/shop"), Path("/srv/logs/web.1.log"), 3.0,
                       RestartPolicy(0.3, 0.1, 0.5, 5, 300.0), port=5000, inherits=True,
                       limits=Limits(memory=2 ** 28, cpu=0.5,
                                     keys=(("memory", "PIKU_MEMORY_MAX_WEB"),)))
    slot = SlotRecord(spec, "RUNNING", 4321, "1-ab.3", pipe, listener, 2, 0, 123.5, None)
    app = AppRecord("shop", "A=1\n", None, 7, (slot,))
    run = CronRecord("shop", "cron1", 3, 4322, "1-ab.4", None, "2026-12-06T05:00:00+00:00", 99.0)
    event = {"time": 1.5, "app": "shop", "process": None, "event": "error", "message": "x"}
    return Record("0.1.0", 12.0, control, (control,), (app,), (run,), (event,))


def test_a_record_is_read_back_as_it_was_sent_and_its_descriptors_stay_private() -> None:
    fds = [*os.pipe(), *os.pipe()]
    try:
        sent = record(fds[0], fds[1], fds[2])
        environ: dict[str, str] = {}
        memfd = send(sent, environ)
        assert os.get_inheritable(memfd) and all(os.get_inheritable(fd) for fd in fds[:3])
        assert not os.get_inheritable(fds[3])           # not named: not carried
        assert receive(environ) == sent and ENV not in environ
        assert not any(os.get_inheritable(fd) for fd in fds)
        with pytest.raises(OSError):
            os.fstat(memfd)                             # read once, then closed
    finally:
        for fd in fds:
            os.close(fd)


def test_a_withdrawn_record_leaves_nothing_behind() -> None:
    read, write = os.pipe()
    try:
        sent = record(read, write, read)
        environ: dict[str, str] = {}
        memfd = send(sent, environ)
        withdraw(memfd, sent, environ)
        assert environ == {} and not os.get_inheritable(read)
    finally:
        os.close(read)
        os.close(write)


def test_no_record_at_a_plain_start_and_an_error_naming_the_variable_for_a_bad_one() -> None:
    assert receive({}) is None
    with pytest.raises(HandoverError, match=r"\$PIKUD_HANDOVER='nope'"):
        receive({ENV: "nope"})
