"""The handover record survives its transport unchanged (a real memfd, no daemon)."""

from __future__ import annotations

import dataclasses
import json
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


def sent_as(data: dict[str, object]) -> dict[str, str]:
    """``data`` in a memfd as an older or newer image would send it."""
    fd = os.memfd_create("old-image", 0)
    os.write(fd, json.dumps(data).encode())
    os.lseek(fd, 0, os.SEEK_SET)
    return {ENV: str(fd)}


def test_a_slot_on_a_unix_socket_crosses_and_a_format_1_record_still_reads() -> None:
    read, write = os.pipe()
    try:
        sent = record(read, write, read)
        app = sent.apps[0]
        unix = dataclasses.replace(app.slots[0].spec, port=None, socket="/srv/s/shop.sock")
        sent = dataclasses.replace(sent, apps=(dataclasses.replace(app, slots=(
            dataclasses.replace(app.slots[0], spec=unix),)),))
        environ: dict[str, str] = {}
        send(sent, environ)
        assert receive(environ) == sent and sent.format == 2
        tcp = record(read, write, read)
        memfd = send(tcp, environ)
        old = json.loads(os.pread(memfd, 1 << 20, 0))   # as pikud wrote it before sockets
        withdraw(memfd, tcp, environ)
        for slot in old["apps"][0]["slots"]:
            del slot["spec"]["socket"]
        got = receive(sent_as(dict(old, format=1)))
        assert got is not None and got.apps[0].slots[0].spec.port == 5000
        assert got.apps[0].slots[0].spec.socket is None
        with pytest.raises(HandoverError, match="format 3, this pikud reads 1 or 2"):
            receive(sent_as(dict(old, format=3)))
    finally:
        os.close(read)
        os.close(write)
