"""Store writes go in the order their folds applied, and a write given up holds no later one."""

from __future__ import annotations

import asyncio

from projections.write_order import WriteOrder


async def test_writes_take_turns_in_the_order_their_tickets_were_taken() -> None:
    order, went = WriteOrder(), []

    async def write(ticket: int) -> None:
        await order.turn(ticket)
        went.append(ticket)
        await asyncio.sleep(0)
        order.done(ticket)

    tickets = [order.take() for _ in range(4)]
    await asyncio.gather(*(write(t) for t in reversed(tickets)))
    assert went == tickets
    assert order.written(tickets[-1])


async def test_a_ticket_given_up_before_its_turn_is_skipped_when_it_comes() -> None:
    order = WriteOrder()
    first, given_up, third = order.take(), order.take(), order.take()
    order.done(given_up)  # an exception while its rows rendered, before its turn
    assert not order.written(given_up), "not while an earlier write is still going"
    waiting = asyncio.ensure_future(order.turn(third))
    await asyncio.sleep(0)
    assert not waiting.done()
    order.done(first)
    await asyncio.wait_for(waiting, 1)
    assert order.written(given_up) and not order.written(third)
    reader = asyncio.ensure_future(order.until_written(third))
    await asyncio.sleep(0)
    assert not reader.done()
    order.done(third)
    await asyncio.wait_for(reader, 1)
