"""Frames fetched while Faust finishes a changelog restore are not thrown away (no broker needed).

After restoring the tracking table from its changelog (an empty state directory), Faust's
`Recovery.on_recovery_completed` resumes the stream partitions while its fetcher is already
running, seeks them to the committed offsets and only then resumes flow control, which clears
every stream buffer. Frames delivered in between were read past (the consumer's position had
moved on) but never processed nor acked: lost, and the group's committed offset could never
pass them (1000-part SIGKILL fault test: frames 4..447 and 4..296 of the two partitions).
"""
from __future__ import annotations

import asyncio
from types import SimpleNamespace

from streams.settings import KafkaSettings, Settings, TopicNames, WorkerSettings


def _app(tmp_path):
    from streams.app import create_app

    settings = Settings(
        app_id="recovery-flow-test", data_dir=str(tmp_path / "d"),
        kafka=KafkaSettings(partitions=2, topics=TopicNames(frames="f", defects="d", parts="p", deadletter="dl",
                                                          cameras="c")),
        worker=WorkerSettings(store="memory://", batch_max=8),
    )
    return create_app(settings, inspector=object())


async def _complete_recovery_while_the_fetcher_delivers(app) -> list:
    """Run Faust's own `on_recovery_completed` with a consumer whose fetcher delivers a frame
    (as the Conductor does: wait for flow control, then put on the stream's buffer) once the
    stream partitions are resumed, i.e. while the seek to the committed offsets runs."""
    from faust.types import TP

    channel = aiter(app.wiring.topics.frames)  # the agent stream's buffer, as app.stream() makes it
    frame = SimpleNamespace(message=SimpleNamespace(topic="f", partition=0, offset=4))
    tps = {TP("f", 0), TP("f", 1)}
    delivered = asyncio.Event()

    async def deliver() -> None:
        await app.flow_control.acquire()
        channel.queue.put_nowait(frame)
        delivered.set()

    tasks = []

    async def perform_seek() -> dict:
        await asyncio.sleep(0.05)  # the fetcher runs meanwhile
        return {}

    consumer = SimpleNamespace(
        assignment=lambda: tps,
        resume_partitions=lambda _tps: tasks.append(asyncio.ensure_future(deliver())),
        perform_seek=perform_seek,
        resume_flow=lambda: None,
    )
    app._consumer = consumer
    app._fetcher = SimpleNamespace(maybe_start=lambda: asyncio.sleep(0))
    app.flow_control.resume()  # flow resumed for the changelog restore, fetcher running
    recovery = app.tables.recovery
    app.consumer_generation_id = 1
    await recovery.on_recovery_completed(generation_id=1)
    await asyncio.wait_for(delivered.wait(), 2)
    return list(channel.queue._queue)


def test_frames_fetched_while_recovery_completes_reach_the_agent(tmp_path):
    app = _app(tmp_path)
    buffered = asyncio.run(_complete_recovery_while_the_fetcher_delivers(app))
    assert [f.message.offset for f in buffered] == [4], "the frame was cleared from the stream buffer: lost"
    assert app.flow_control.is_active()
