"""A stop's deadline (ADR 0065): ``_stop_within`` ends a stop that overruns or meets a second
signal, and ``_Signals`` never loses the second of two signals, however close together."""

from __future__ import annotations

import asyncio
import os
import signal

from linkflow_stream.engine import STOP_OVERDUE, _Signals, _stop_within


async def test_a_stop_that_finishes_in_time_is_a_clean_exit() -> None:
    assert await _stop_within(asyncio.sleep(0.01), 5, asyncio.Event()) == 0


async def test_a_stop_that_overruns_is_abandoned_at_its_deadline() -> None:
    stuck = asyncio.get_running_loop().create_future()  # a stop waiting for a broker that is gone
    began = asyncio.get_running_loop().time()
    assert await _stop_within(stuck, 0.2, asyncio.Event()) == STOP_OVERDUE
    assert 0.2 <= asyncio.get_running_loop().time() - began < 2


async def test_a_second_signal_abandons_the_stop_at_once() -> None:
    again = asyncio.Event()
    asyncio.get_running_loop().call_later(0.05, again.set)
    stuck = asyncio.get_running_loop().create_future()
    began = asyncio.get_running_loop().time()
    assert await _stop_within(stuck, 600, again) == STOP_OVERDUE
    assert asyncio.get_running_loop().time() - began < 2


async def test_two_signals_in_one_turn_of_the_loop_are_the_stop_and_its_abandonment() -> None:
    loop = asyncio.get_running_loop()
    signals = _Signals()
    try:
        os.kill(os.getpid(), signal.SIGTERM)
        os.kill(os.getpid(), signal.SIGINT)  # before the loop ran the first one's handler
        async with asyncio.timeout(5):
            await signals.second.wait()
        assert signals.first.is_set()
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
