"""The web view (streams.review.web) and the data set export on the real ClickHouse 18.16 server.

Each test has its own database, seeded with sampled frames and candidates as the sink writes them;
requests go through FastAPI's in-process TestClient.
"""
from __future__ import annotations

import json
import re

import pytest
from fastapi.testclient import TestClient

from sinks.migrations import migrate
from sinks.sql import DriverExecutor
from sinks.testing import make_alert, make_defect, make_part, seed
from streams.review import queries as q
from streams.review.export import export_dataset
from streams.review.passwords import hash_password
from streams.review.testing import make_review, seed_review
from streams.review.web.app import create_app
from streams.settings import ClickHouseSettings, PlantSettings, Settings, WebSettings

T0 = 1_763_700_000_000  # 2025-11-21 04:40 UTC
EVIL = "<script>alert(1)</script>"
NOW_S = (T0 + 3_600_000) / 1000


@pytest.fixture
def db(stack, fresh_database):
    cfg = ClickHouseSettings(host=stack.host, port=stack.clickhouse_port, database=fresh_database)
    ex = DriverExecutor.connect(cfg)
    migrate(ex)
    part = make_part(1, T0, camera="cam-1", fail=True, plant=PlantSettings(timezone="UTC"))
    p1 = part.part_id
    reviews = [make_review("cam-1", p1, 3, T0 + 1000, score=0.9),
               make_review("cam-1", p1, 4, T0 + 1100, score=0.8, reason="track_dropped",
                           detections=(("scratch", 0.4, (50, 5, 70, 20)),), note="track 2: 2 hits of 5 frames"),
               make_review("cam-1", "p2", 1, T0 + 2000, score=0.7, reason="random_good", detections=()),
               make_review(EVIL, "p3", 1, T0 + 3000, score=0.6, detections=((EVIL, 0.55, (10, 10, 30, 30)),))]
    seed_review(ex, [f for f, _c in reviews], [c for _f, c in reviews])
    evil = make_part(2, T0 + 60_000, camera=EVIL, fail=True, counts={EVIL: 1})
    seed(ex, [part, make_defect(part, 0), evil, make_defect(evil, 0, EVIL), make_alert(T0 + 1000, camera=EVIL)])
    yield cfg, ex, reviews
    ex.close()


@pytest.fixture
def client(db):
    cfg, _ex, _r = db
    settings = Settings(clickhouse=cfg, plant=PlantSettings(timezone="UTC"),
                        web=WebSettings(users={"alice": hash_password("s3cret"), "bob": hash_password("hunter2")},
                                        secret_key="k" * 40))
    app = create_app(settings, lambda: DriverExecutor.connect(cfg), clock=lambda: NOW_S)
    with TestClient(app, base_url="http://127.0.0.1") as c:
        yield c


def csrf_of(html: str) -> str:
    m = re.search(r'name="csrf" value="([^"]+)"', html)
    assert m, html[:500]
    return m.group(1)


def login(c: TestClient, user: str = "alice", password: str = "s3cret") -> str:
    token = csrf_of(c.get("/login").text)
    r = c.post("/login", data={"username": user, "password": password, "csrf": token, "next": "/queue"},
               follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/queue", r.text
    return csrf_of(c.get("/queue").text)


def labels(ex) -> list[tuple]:
    return ex.query("SELECT candidate_id, action, defect_class, bbox_x0, bbox_y0, bbox_x1, bbox_y1, reviewer, created_at "
                    "FROM labels ORDER BY action, candidate_id")


PAGES = ["/queue", "/defects", "/spc", "/spc/chart.png", "/live", "/models", "/part?camera=cam-1&part=cam-1-1763700000000-1", "/queue/next"]


def test_every_page_needs_a_login(client, db):
    _cfg, _ex, reviews = db
    frame, cand = reviews[0]
    for path in PAGES + [f"/review/{cand.candidate_id}", f"/frames/{frame.frame_id}/image", "/"]:
        r = client.get(path, follow_redirects=False)
        assert r.status_code == 303 and r.headers["location"].startswith("/login?next="), path
    r = client.post(f"/review/{cand.candidate_id}", data={"action": "confirm"}, follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"].startswith("/login")
    # a wrong password, an unknown user and a forged cookie get nobody in
    token = csrf_of(client.get("/login").text)
    for user, pw in (("alice", "wrong"), ("mallory", "s3cret")):
        r = client.post("/login", data={"username": user, "password": pw, "csrf": token}, follow_redirects=False)
        assert r.headers["location"].startswith("/login?") and "failed=1" in r.headers["location"]
    client.cookies.set("defectstream_session", "eyJ1IjoiYWxpY2UiLCJjc3JmIjoieCJ9.forged.sig")
    assert client.get("/queue", follow_redirects=False).status_code == 303


def test_logged_in_every_page_answers(client, db):
    login(client)
    for path in PAGES:
        r = client.get(path)
        assert r.status_code == 200, (path, r.text[:400])
        assert r.headers["content-security-policy"].startswith("default-src 'none'")
    assert client.get("/spc/chart.png").content[:8] == b"\x89PNG\r\n\x1a\n"
    _cfg, _ex, reviews = db
    img = client.get(f"/frames/{reviews[0][0].frame_id}/image")
    assert img.headers["content-type"] == "image/png" and img.content == reviews[0][0].image
    part = client.get("/part?camera=cam-1&part=cam-1-1763700000000-1").text
    assert "FAIL" in part and "track 2: 2 hits of 5 frames" in part and "crack" in part


def test_post_without_or_with_a_wrong_csrf_token_is_refused(client, db):
    _cfg, ex, reviews = db
    token = login(client)
    cid = reviews[0][1].candidate_id
    for data in ({"action": "confirm"}, {"action": "confirm", "csrf": "not-the-token"}, {"action": "confirm", "csrf": ""}):
        r = client.post(f"/review/{cid}", data=data, follow_redirects=False)
        assert r.status_code == 403, data
    assert client.post("/logout", data={}, follow_redirects=False).status_code == 403
    assert labels(ex) == []
    # the login form needs its token too
    fresh = TestClient(client.app, base_url="http://127.0.0.1")
    assert fresh.post("/login", data={"username": "alice", "password": "s3cret"}, follow_redirects=False).status_code == 403
    assert client.post(f"/review/{cid}", data={"action": "confirm", "csrf": token}, follow_redirects=False).status_code == 303


def test_a_camera_id_like_a_script_tag_is_escaped_everywhere(client, db):
    login(client)
    for path in ["/queue", "/defects", "/live", "/models", "/spc", f"/part?camera={EVIL}&part=p3",
                 f"/review/{db[2][3][1].candidate_id}"]:
        html = client.get(path).text
        assert EVIL not in html, path
        assert "&lt;script&gt;" in html, path
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in client.get("/queue").text


def test_confirm_reject_relabel_and_missed_write_labels(client, db):
    _cfg, ex, reviews = db
    token = login(client)
    (_f1, c1), (_f2, c2), (_f3, c3), (_f4, c4) = reviews
    assert q.count_queue(ex) == 4
    post = lambda cid, **data: client.post(f"/review/{cid}", data={"csrf": token, **data}, follow_redirects=False)  # noqa: E731
    r = post(c1.candidate_id, action="confirm")
    assert r.status_code == 303 and r.headers["location"] == "/queue/next"
    assert post(c2.candidate_id, action="reject").status_code == 303
    assert post(c4.candidate_id, action="relabel", defect_class="inclusion").status_code == 303
    r = post(c3.candidate_id, action="missed", defect_class="crack", x0="60", y0="30", x1="10", y1="5")
    assert r.status_code == 303 and r.headers["location"] == f"/review/{c3.candidate_id}"
    assert post(c3.candidate_id, action="missed", defect_class="crack", x0="1", y0="1", x1="1", y1="9").status_code == 400
    assert post(c3.candidate_id, action="relabel", defect_class="<b>").status_code == 400
    assert post(c3.candidate_id, action="delete").status_code == 400
    at = int(NOW_S * 1000)
    assert labels(ex) == sorted([
        (c1.candidate_id, "confirm", "crack", 20, 10, 40, 30, "alice", at),
        (c3.candidate_id, "missed", "crack", 10, 5, 60, 30, "alice", at),
        (c4.candidate_id, "relabel", "inclusion", 10, 10, 30, 30, "alice", at),
        (c2.candidate_id, "reject", "scratch", 50, 5, 70, 20, "alice", at),
    ], key=lambda r: (r[1], r[0]))
    # judged candidates leave the queue; "missed" alone does not judge the detection
    assert [c.candidate_id for c in q.fetch_queue(ex)] == [c3.candidate_id]
    assert client.get("/queue/next", follow_redirects=False).headers["location"] == f"/review/{c3.candidate_id}"
    # the same form posted twice in the same millisecond is one label
    post(c1.candidate_id, action="confirm")
    assert ex.query("SELECT uniqExact(label_id), count() FROM labels WHERE action = 'confirm'")[0] == (1, 2)


def test_export_then_the_plain_reader_reads_it_back(client, db, tmp_path):
    from models.data.datasets import read_plain

    _cfg, ex, reviews = db
    token = login(client)
    (f1, c1), (f2, c2), (f3, c3), (f4, c4) = reviews
    for cid, data in ((c1.candidate_id, {"action": "confirm"}), (c2.candidate_id, {"action": "reject"}),
                      (c3.candidate_id, {"action": "missed", "defect_class": "scratch", "x0": 5, "y0": 5, "x1": 25, "y1": 15}),
                      (c3.candidate_id, {"action": "confirm"})):
        assert client.post(f"/review/{cid}", data={"csrf": token, **data}, follow_redirects=False).status_code == 303
    manifest = export_dataset(ex, tmp_path / "set", T0, T0 + 10_000, cameras=["cam-1"], clock=lambda: NOW_S)
    assert manifest["classes"] == ["crack", "scratch"] and manifest["frames_total"] == 3
    by_id = {f["frame_id"]: f for f in manifest["frames"]}
    assert by_id[f1.frame_id]["boxes"] == [{"class": "crack", "box": [20, 10, 40, 30]}]
    assert by_id[f2.frame_id]["boxes"] == [] and by_id[f2.frame_id]["mask"] is None  # rejected: a defect-free example
    assert by_id[f3.frame_id]["boxes"] == [{"class": "scratch", "box": [5, 5, 25, 15]}]  # good part with a missed defect
    assert by_id[f1.frame_id]["reviewers"] == ["alice"] and by_id[f1.frame_id]["model_version"] == "m1"
    assert f4.frame_id not in by_id  # other camera
    assert json.loads((tmp_path / "set" / "manifest.json").read_text()) == manifest
    samples = {s.source.rsplit("/", 1)[1][:-4]: s for s in read_plain(tmp_path / "set")}
    assert set(samples) == {f1.frame_id, f2.frame_id, f3.frame_id}
    s1 = samples[f1.frame_id]
    assert s1.class_names == ("crack", "scratch") and s1.image.shape == (48, 96)
    assert [(b.x0, b.y0, b.x1, b.y1, cid) for b, cid in s1.boxes] == [(20, 10, 40, 30, 1)]
    assert [(b.x0, b.y0, b.x1, b.y1, cid) for b, cid in samples[f3.frame_id].boxes] == [(5, 5, 25, 15, 2)]
    assert samples[f2.frame_id].boxes == ()
    # the pixels are the stored frame's, bit for bit (PNG is lossless)
    import cv2
    import numpy as np

    assert np.array_equal(s1.image, cv2.imdecode(np.frombuffer(f1.image, np.uint8), cv2.IMREAD_GRAYSCALE))


def test_every_review_query_runs_on_the_18_16_server(db):
    _cfg, ex, _r = db
    for name, sql in q.query_catalog(T0, T0 + 60_000).items():
        ex.query(sql)  # raises on a dialect error


def test_dataset_export_command_and_web_command(db, client, tmp_path, monkeypatch, capsys):
    import socket
    import subprocess
    import sys
    import time
    import urllib.request

    from streams.cli import main

    cfg, ex, reviews = db
    token = login(client)
    client.post(f"/review/{reviews[0][1].candidate_id}", data={"csrf": token, "action": "confirm"})
    env = {"DEFECTSTREAM_CLICKHOUSE__HOST": cfg.host, "DEFECTSTREAM_CLICKHOUSE__PORT": str(cfg.port),
           "DEFECTSTREAM_CLICKHOUSE__DATABASE": cfg.database, "DEFECTSTREAM_PLANT__TIMEZONE": "UTC"}
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    out = tmp_path / "set"
    assert main(["dataset", "export", "--since", "2025-11-21T04:00", "--until", "2025-11-21T05:00",
                 "--camera", "cam-1", "--out", str(out)]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["frames"] == 1 and summary["classes"] == ["crack"]
    assert (out / "masks" / f"{reviews[0][0].frame_id}.png").is_file()
    assert main(["dataset", "export", "--since", "2025-11-21T04:00", "--out", str(out)]) == 2  # not empty: refused
    # `defectstream web` serves the login page on loopback and sends anonymous users there
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "streams.cli", "web", "--port", str(port)],
                            env={**__import__("os").environ, **env}, stderr=subprocess.PIPE, text=True)
    try:
        deadline, page = time.monotonic() + 30, None
        while time.monotonic() < deadline and page is None:
            try:
                page = urllib.request.urlopen(f"http://127.0.0.1:{port}/queue", timeout=2)
            except OSError:
                time.sleep(0.3)
        assert page is not None and page.url.startswith(f"http://127.0.0.1:{port}/login")
        assert 'name="csrf"' in page.read().decode()
    finally:
        proc.terminate()
        proc.wait(15)
        proc.stderr.close()
