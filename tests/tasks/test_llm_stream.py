"""The streaming helpers every LLM client shares (tasks/llm/base.py), without a server."""

from __future__ import annotations

import asyncio

from tasks.llm.base import with_timeouts


def test_a_stop_is_heard_even_when_the_next_line_is_ready_at_that_moment():
    # A streaming answer almost always has its next line ready; the Stop (a cancellation of the call's task) must
    # end the stream all the same (asyncio.wait_for on Python 3.11 returned the line and swallowed it).
    async def main() -> tuple[bool, int]:
        consumer: asyncio.Task | None = None
        read_after_stop = 0
        stopped = asyncio.Event()

        async def lines():
            number = 0
            while True:
                number += 1
                await asyncio.sleep(0)
                if number == 5:
                    consumer.cancel()  # the Stop arrives just as this line is ready
                    stopped.set()
                yield f"line {number}"

        async def consume() -> None:
            nonlocal read_after_stop
            async for _ in with_timeouts(lines(), "test"):
                if stopped.is_set():
                    read_after_stop += 1
                if read_after_stop > 100:
                    return

        consumer = asyncio.create_task(consume())
        await asyncio.wait([consumer], timeout=5)
        return consumer.cancelled(), read_after_stop

    cancelled, read_after_stop = asyncio.run(main())
    assert cancelled and read_after_stop <= 1
