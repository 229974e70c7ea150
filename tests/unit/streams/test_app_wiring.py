"""The Faust app is wired from Settings: topics, co-partitioned table, agents (no broker needed)."""
from __future__ import annotations

from streams.settings import KafkaSettings, Settings, TopicNames, WorkerSettings


def test_create_app_wires_topics_table_and_agents(tmp_path):
    from streams.app import create_app

    settings = Settings(
        app_id="wiring-test", data_dir=str(tmp_path / "d"),
        kafka=KafkaSettings(partitions=3, topics=TopicNames(frames="f", defects="d", parts="p", deadletter="dl",
                                                          cameras="c")),
        worker=WorkerSettings(store="memory://", batch_max=5),
    )
    app = create_app(settings, inspector=object())
    w = app.wiring
    assert w.topics.frames.get_topic_name() == "f" and w.topics.frames.partitions == 3
    assert w.topics.part_timeouts.get_topic_name() == "wiring-test-part-timeouts"
    assert w.topics.part_timeouts.partitions == 3
    assert w.table.table.partitions == 3  # co-partitioned with `frames`
    assert w.topics.cameras.compacting
    assert w.topics.defects.value_serializer == "avro-defect"
    assert {a.name.rsplit(".", 1)[-1] for a in app.agents.values()} >= {"inspect", "close-idle-parts"}
    assert app.conf.broker_session_timeout == settings.worker.session_timeout_s
    assert (tmp_path / "d").is_dir()
