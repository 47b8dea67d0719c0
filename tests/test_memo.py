"""memo.PerIteration: one read per event-loop iteration on the loop's thread, a fresh read
anywhere else (another thread, no running loop, a later loop), so a commit made before a
request arrived is always seen (the catalog's data_version check)."""
from __future__ import annotations

import asyncio
import threading

from proxy.memo import PerIteration


def test_a_value_is_read_once_per_iteration_and_afresh_elsewhere() -> None:
    version = [0]
    reads = [0]

    def read() -> int:
        reads[0] += 1
        return version[0]

    held = PerIteration(read)

    async def main() -> None:
        assert held.get() == 0 and held.get() == 0 and reads[0] == 1  # one read in this iteration
        version[0] = 1
        assert held.get() == 0  # the same iteration: held
        other: list[int] = []
        thread = threading.Thread(target=lambda: other.append(held.get()))
        thread.start()
        thread.join()
        assert other == [1]  # another thread reads afresh
        await asyncio.sleep(0)  # the next iteration
        assert held.get() == 1
        version[0] = 2
        # the loop stops before its next iteration could forget the value

    asyncio.run(main())
    assert held.get() == 2  # no running loop: read afresh
    version[0] = 3

    async def later() -> None:
        assert held.get() == 3  # a later loop on the same thread: never the stopped loop's value
        version[0] = 4
        assert held.get() == 3
        await asyncio.sleep(0)
        assert held.get() == 4

    asyncio.run(later())
