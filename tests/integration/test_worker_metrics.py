"""The worker's Prometheus endpoint on the real broker, read by `defectstream status`."""
from __future__ import annotations

import json
import socket
import time

from schemas.events import FrameEvent
from streams.inspection.intake import expected_partition
from streams.metrics import ScrapeError, scrape, total
from streams.sim.simulator import SimulationConfig, generate


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_worker_serves_frames_dead_letters_lag_and_open_parts(needs_checkpoints, stream_worker_factory, capsys):
    from kafka import KafkaProducer

    from streams.cli import main

    port = _free_port()
    worker = stream_worker_factory(DEFECTSTREAM_WORKER__METRICS_PORT=str(port), DEFECTSTREAM_TRACKING__PART_TIMEOUT_S="300")
    s = worker.settings
    cfg = SimulationConfig(cameras=1, parts=2, frames_per_part=3, frame_shape=(128, 256), seed=11,
                           camera_prefix="met", start_time_ms=int(time.time() * 1000) - 60_000, progress=False)
    frames = [ev for ev, _gt in generate(cfg)][:5]  # the first part whole, the second still open
    cam = frames[0].camera_id
    worker.start()
    url = f"http://127.0.0.1:{port}/metrics"
    codec = FrameEvent.codec()
    prod = KafkaProducer(bootstrap_servers=s.kafka.bootstrap_list, acks="all")
    for ev in frames:
        prod.send(s.kafka.topics.frames, value=codec.encode(ev.to_avro()), key=cam.encode()).get(30)
    home = expected_partition(cam.encode(), s.kafka.partitions)
    prod.send(s.kafka.topics.frames, value=b"not avro", key=cam.encode(), partition=home).get(30)
    prod.close()

    deadline, samples = time.monotonic() + 90, []
    while time.monotonic() < deadline:
        try:
            samples = scrape(url)
        except ScrapeError:
            samples = []
        lag = total(samples, "defectstream_consumer_lag", topic=s.kafka.topics.frames, partition=str(home))
        if (total(samples, "defectstream_frames_total") or 0) >= 6 and lag == 0 and \
                total(samples, "defectstream_open_parts") == 1:
            break
        time.sleep(0.5)
    assert worker.alive(), worker.log_tail()
    assert total(samples, "defectstream_frames_total") == 6, (samples, worker.log_tail())
    assert total(samples, "defectstream_deadletters_total", reason="decode_error") == 1
    assert total(samples, "defectstream_parts_closed_total", reason="LAST_FRAME") == 1
    assert total(samples, "defectstream_consumer_lag", topic=s.kafka.topics.frames, partition=str(home)) == 0
    assert total(samples, "defectstream_open_parts") == 1
    assert (total(samples, "defectstream_batch_seconds_count", stage="inference") or 0) >= 1

    down = f"http://127.0.0.1:{_free_port()}/metrics"
    assert main(["status", "--worker-url", url, "--sink-url", down, "--interval", "0", "--output", "json"]) == 1
    out = capsys.readouterr()
    doc = json.loads(out.out)
    assert doc["worker"]["open_parts"] == 1 and doc["worker"]["deadletters"] == {"decode_error": 1}
    assert "unreachable" in doc["sink"]["error"] and "Traceback" not in out.err
