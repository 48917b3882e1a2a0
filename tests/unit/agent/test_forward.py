"""The agent's splice (``agent/forward.py``): ordering rules that the e2e tests can only hit by chance.

An SSH channel (the SSH entry's upstream) delivers its backlog synchronously inside ``resume_reading``;
a TCP transport never does. Bytes delivered that way must queue behind the chunks just taken, or a
large response arrives reordered (seen as a corrupted 5 MB download through ``ssh -R``).
"""

from __future__ import annotations

from typing import Any

from hatchway.agent.forward import HIGH_WATER, _Upstream


class _Stream:
    def __init__(self) -> None:
        self.written: list[bytes] = []

    def write_nowait(self, data: bytes) -> int:
        self.written.append(bytes(data))
        return len(data)


class _SyncResumeChannel:
    """A transport whose resume_reading hands over buffered data at once, as asyncssh's channels do."""

    def __init__(self, pipe: _Upstream, backlog: bytes) -> None:
        self.pipe = pipe
        self.backlog = backlog
        self.paused = False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default

    def is_closing(self) -> bool:
        return False

    def pause_reading(self) -> None:
        self.paused = True

    def resume_reading(self) -> None:
        self.paused = False
        if self.backlog:
            data, self.backlog = self.backlog, b""
            self.pipe.data_received(data)


async def test_backlog_from_resume_reading_queues_behind_the_taken_chunks() -> None:
    pipe = _Upstream()
    chan = _SyncResumeChannel(pipe, b"backlog")
    pipe.connection_made(chan)  # type: ignore[arg-type]
    stream = _Stream()
    pipe.stream = stream  # type: ignore[assignment]
    pipe.pumping = True  # the pump is busy: this data queues and fills the buffer
    first = b"x" * HIGH_WATER
    pipe.data_received(first)
    assert chan.paused
    pipe.pumping = False
    assert await pipe.take() == [first]
    assert not chan.paused
    assert stream.written == []  # the backlog did not take the direct path ahead of ``first``
    assert await pipe.take() == [b"backlog"]


async def test_data_goes_straight_to_the_stream_when_nothing_is_queued() -> None:
    pipe = _Upstream()
    pipe.connection_made(_SyncResumeChannel(pipe, b""))  # type: ignore[arg-type]
    stream = _Stream()
    pipe.stream = stream  # type: ignore[assignment]
    pipe.data_received(b"small")
    assert stream.written == [b"small"]
