"""procman.readers: many descriptors behind one loop reader, with real pipes."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator

import pytest

from pikud.procman.readers import readers

DEADLINE = 5.0


@pytest.fixture
def pipes() -> Iterator[list[tuple[int, int]]]:
    """Pipes (read end, write end) a test makes; every end left open is closed after it."""
    made: list[tuple[int, int]] = []
    yield made
    for ends in made:
        for fd in ends:
            try:
                os.close(fd)
            except OSError:
                continue


async def test_a_readable_descriptor_calls_its_callback_until_removed(
        pipes: list[tuple[int, int]]) -> None:
    pipes += [os.pipe(), os.pipe()]
    (read, write), (later, later_write) = pipes
    called, later_called = asyncio.Event(), asyncio.Event()
    readers().add(read, called.set)
    os.write(write, b"x")
    async with asyncio.timeout(DEADLINE):
        await called.wait()
    readers().remove(read)
    called.clear()
    os.write(write, b"y")
    readers().add(later, later_called.set)      # its call proves a later dispatch
    os.write(later_write, b"z")
    async with asyncio.timeout(DEADLINE):
        await later_called.wait()
    readers().remove(later)
    assert not called.is_set()
    assert os.read(read, 10) == b"xy"


async def test_a_callback_is_called_again_while_data_is_left(
        pipes: list[tuple[int, int]]) -> None:
    pipes.append(os.pipe())
    read, write = pipes[0]
    chunks: list[bytes] = []
    done = asyncio.Event()

    def one_byte() -> None:
        chunks.append(os.read(read, 1))
        if len(chunks) == 3:
            readers().remove(read)
            done.set()

    readers().add(read, one_byte)
    os.write(write, b"abc")
    async with asyncio.timeout(DEADLINE):
        await done.wait()
    assert chunks == [b"a", b"b", b"c"]


async def test_a_descriptor_reused_during_dispatch_gets_no_stale_event(
        pipes: list[tuple[int, int]]) -> None:
    """Two pipes ready at once; the first callback closes the other and a new pipe takes
    its number: the new one's callback must not run for the old pipe's data."""
    pipes += [os.pipe(), os.pipe()]
    (read_a, write_a), (read_b, write_b) = pipes
    seen: list[bytes] = []          # what the new pipe's callback found at each call
    handled, called = asyncio.Event(), asyncio.Event()

    def read_new(fd: int) -> None:
        try:
            seen.append(os.read(fd, 10))
            called.set()
        except BlockingIOError:
            seen.append(b"(nothing: a stale event)")

    def first(own: int, other: int) -> None:
        readers().remove(own)
        readers().remove(other)
        os.close(other)
        reused = os.pipe()
        pipes.append(reused)
        assert reused[0] == other, "the lowest free number is reused"
        os.set_blocking(reused[0], False)
        readers().add(reused[0], lambda: read_new(reused[0]))
        handled.set()

    readers().add(read_a, lambda: first(read_a, read_b))
    readers().add(read_b, lambda: first(read_b, read_a))
    os.write(write_a, b"a")
    os.write(write_b, b"b")
    async with asyncio.timeout(DEADLINE):
        await handled.wait()
        os.write(pipes[-1][1], b"new")
        await called.wait()
    readers().remove(pipes[-1][0])
    assert seen == [b"new"]


async def test_a_callback_that_raises_is_reported_and_does_not_starve_the_others(
        pipes: list[tuple[int, int]]) -> None:
    pipes += [os.pipe(), os.pipe()]
    (first, first_write), (second, second_write) = pipes
    loop = asyncio.get_running_loop()
    reported: list[dict[str, object]] = []
    loop.set_exception_handler(lambda _loop, context: reported.append(context))
    served = asyncio.Event()

    def broken() -> None:
        raise RuntimeError("broken reader")
    readers().add(first, broken)                # stays readable: it raises at every pass
    readers().add(second, served.set)
    try:
        os.write(first_write, b"x")
        os.write(second_write, b"y")
        async with asyncio.timeout(DEADLINE):
            await served.wait()
    finally:
        readers().remove(first)
        readers().remove(second)
        loop.set_exception_handler(None)
    assert reported and isinstance(reported[0]["exception"], RuntimeError)
    assert f"descriptor {first}" in str(reported[0]["message"])
