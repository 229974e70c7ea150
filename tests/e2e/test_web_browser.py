"""The web view in a real browser: Debian's chromium, headless, driven by Playwright for Python.

Nothing downloads a browser: Playwright is given `/usr/bin/chromium` (`apt-get install chromium`, which
`make test` does). The test seeds a database of its own with sampled frames and candidates (the sink's
row mapping), serves the app with uvicorn on a free loopback port, logs in, confirms / rejects /
relabels / marks a missed defect through the page (keys and a box drawn with the mouse), checks the
`labels` rows, exports the data set and reads it back, and screenshots every page (into docs/web/ with
DEFECTSTREAM_SCREENSHOTS=docs/web).
"""
from __future__ import annotations

import os
import time
import uuid
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# the README's screenshots: `DEFECTSTREAM_SCREENSHOTS=docs/web pytest tests/e2e/test_web_browser.py`; otherwise the
# test's own folder, so a test run leaves the tracked pictures alone
SHOTS_ENV = os.environ.get("DEFECTSTREAM_SCREENSHOTS")


@pytest.fixture
def served(stack_up, serve_app):
    from clickhouse_driver import Client

    from sinks.migrations import migrate
    from sinks.sql import DriverExecutor
    from sinks.testing import make_alert, make_defect, make_part, seed, sample_events
    from streams.review.passwords import hash_password
    from streams.review.testing import make_review, seed_review
    from streams.review.web.app import create_app
    from streams.settings import ClickHouseSettings, PlantSettings, Settings, WebSettings

    db = f"test_web_browser_{uuid.uuid4().hex[:8]}"
    admin = Client("127.0.0.1", port=int(os.environ.get("DEFECTSTREAM_STACK_CLICKHOUSE_PORT", 19000)))
    admin.execute(f"CREATE DATABASE {db}")
    cfg = ClickHouseSettings(port=int(os.environ.get("DEFECTSTREAM_STACK_CLICKHOUSE_PORT", 19000)), database=db)
    ex = DriverExecutor.connect(cfg)
    now = int(time.time() * 1000)
    t0 = now - 6 * 3600 * 1000
    try:
        migrate(ex)
        events = list(sample_events(t0, 300, step_ms=60_000, p=0.08))
        part = make_part(10_000, now - 20_000, camera="cam-1", fail=True)
        seed(ex, [*events, part, make_defect(part, 0), make_alert(t0 + 3 * 3600 * 1000)])
        w, h = 320, 96
        reviews = [
            make_review("cam-1", part.part_id, 3, now - 19_000, width=w, height=h, score=0.95,
                        detections=(("crack", 0.52, (60, 20, 110, 60)), ("scratch", 0.9, (200, 30, 260, 50)))),
            make_review("cam-1", part.part_id, 4, now - 18_500, width=w, height=h, score=0.9, reason="track_dropped",
                        detections=(("scratch", 0.41, (150, 10, 190, 40)),), note="track 4: 2 hits of 5 frames, not confirmed"),
            make_review("cam-2", "cam-2-part-7", 2, now - 15_000, width=w, height=h, score=0.8, reason="class_flipped",
                        detections=(("crack", 0.7, (30, 30, 80, 70)),), note="votes crack 0.55, scratch 0.45"),
            make_review("cam-2", "cam-2-part-9", 5, now - 10_000, width=w, height=h, score=0.1, reason="random_good",
                        detections=(), note="part judged good",
                        image=__import__("streams.review.testing", fromlist=["tiny_png"]).tiny_png(w, h, seed=9, boxes=[(240, 40, 280, 80)])),
        ]
        seed_review(ex, [f for f, _ in reviews], [c for _, c in reviews])
        settings = Settings(clickhouse=cfg, plant=PlantSettings(timezone="UTC"),
                            web=WebSettings(users={"alice": hash_password("s3cret")}, secret_key="b" * 40))
        app = create_app(settings, lambda: DriverExecutor.connect(cfg))
        yield serve_app(app), ex, reviews, now
    finally:
        ex.close()
        admin.execute(f"DROP DATABASE IF EXISTS {db}")
        admin.disconnect()


def test_review_through_the_browser_then_export(browser, served, tmp_path):
    from models.data.datasets import read_plain
    from streams.review.export import export_dataset

    base, ex, reviews, now = served
    SHOTS = Path(SHOTS_ENV) if SHOTS_ENV else tmp_path / "screenshots"
    SHOTS.mkdir(parents=True, exist_ok=True)
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)

    page.goto(base + "/queue")
    assert page.url.startswith(base + "/login")
    page.screenshot(path=str(SHOTS / "login.png"))
    page.fill("input[name=username]", "alice")
    page.fill("input[name=password]", "wrong")
    page.click("button[type=submit]")
    assert page.locator("#login-failed").is_visible()
    page.fill("input[name=username]", "alice")
    page.fill("input[name=password]", "s3cret")
    page.click("button[type=submit]")
    page.wait_for_url(base + "/queue")
    assert "4 pending" in page.inner_text("h1")
    page.screenshot(path=str(SHOTS / "queue.png"), full_page=True)

    (f1, c1), (f2, c2), (f3, c3), (f4, c4) = reviews
    page.keyboard.press("Enter")  # start reviewing: the highest score first
    page.wait_for_url(f"{base}/review/{c1.candidate_id}")
    assert page.locator("rect.det").count() == 2 and page.locator("rect.hl").count() == 1
    page.screenshot(path=str(SHOTS / "review.png"), full_page=True)
    page.keyboard.press("c")  # confirm
    page.wait_for_url(f"{base}/review/{c2.candidate_id}")
    page.keyboard.press("x")  # reject
    page.wait_for_url(f"{base}/review/{c3.candidate_id}")
    page.keyboard.press("r")  # relabel: focus the class field, type, Enter
    page.keyboard.type("scratch")
    page.keyboard.press("Enter")
    page.wait_for_url(f"{base}/review/{c4.candidate_id}")
    # missed defect: draw a box over the dark blob at (240, 40)-(280, 80) of the 320x96 frame
    img = page.locator("#drawable").bounding_box()
    sx, sy = img["width"] / 320, img["height"] / 96
    page.mouse.move(img["x"] + 240 * sx, img["y"] + 40 * sy)
    page.mouse.down()
    page.mouse.move(img["x"] + 260 * sx, img["y"] + 60 * sy)
    page.mouse.move(img["x"] + 280 * sx, img["y"] + 80 * sy)
    page.mouse.up()
    boxed = [int(page.input_value(f"#b{k}")) for k in ("x0", "y0", "x1", "y1")]
    assert all(abs(a - b) <= 2 for a, b in zip(boxed, (240, 40, 280, 80))), boxed
    page.keyboard.press("m")
    page.keyboard.type("dent")
    with page.expect_navigation():  # back to the same page: more boxes may follow
        page.keyboard.press("Enter")
    assert page.locator("rect.lab.missed").count() == 1
    page.screenshot(path=str(SHOTS / "review-missed.png"), full_page=True)
    page.keyboard.press("c")  # the good part is otherwise good
    page.wait_for_url(base + "/queue")
    assert page.locator("#queue-empty").is_visible()

    rows = ex.query("SELECT candidate_id, action, defect_class, reviewer FROM labels ORDER BY created_at, action")
    assert sorted(rows) == sorted([(c1.candidate_id, "confirm", "crack", "alice"), (c2.candidate_id, "reject", "scratch", "alice"),
                                   (c3.candidate_id, "relabel", "scratch", "alice"), (c4.candidate_id, "missed", "dent", "alice"),
                                   (c4.candidate_id, "confirm", "", "alice")])
    ts = ex.query("SELECT min(created_at), max(created_at) FROM labels")[0]
    assert now - 60_000 < ts[0] <= ts[1] <= int(time.time() * 1000)

    page.goto(f"{base}/review/{c1.candidate_id}")
    page.keyboard.press("p")  # the whole part a key away
    page.wait_for_url(f"{base}/part?*")
    assert "FAIL" in page.inner_text("main") and "track 4: 2 hits of 5 frames" in page.inner_text("main")
    page.screenshot(path=str(SHOTS / "part.png"), full_page=True)
    for name, path in (("defects", "/defects"), ("spc", "/spc?by=hour&since=8h"), ("live", "/live?window_s=3600"),
                       ("models", "/models")):
        page.goto(base + path)
        assert page.locator("h1").count() == 1, name
        if name == "spc":
            assert page.evaluate("document.getElementById('spc-chart').naturalWidth") > 100
        page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)
    assert not errors, errors  # no script error, no CSP violation

    manifest = export_dataset(ex, tmp_path / "set", now - 3600_000, now + 1)
    assert manifest["classes"] == ["crack", "dent", "scratch"] and manifest["frames_total"] == 4
    assert manifest["reviewers"] == ["alice"]
    samples = {Path(s.source).stem: s for s in read_plain(tmp_path / "set")}
    assert [(cid, b.x1 - b.x0 > 30) for b, cid in samples[f4.frame_id].boxes] == [(2, True)]
    assert samples[f2.frame_id].boxes == ()


def test_the_live_page_shows_a_new_verdict_within_a_second_without_reloading(browser, served, web_login):
    """A part stored while the live page is open shows up in place (its <main> is fetched again twice a second,
    the page is not reloaded), well inside the 2 s the page may be behind the worker's rows."""
    from sinks.testing import make_part, seed

    base, ex, _reviews, _now = served
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    web_login(page, base, "alice", "s3cret")
    page.goto(base + "/live")
    page.evaluate("window.__stayed = true")  # a reload would drop it
    assert "cam-live" not in page.inner_text("#live-cameras")
    seed(ex, [make_part(77, int(time.time() * 1000), camera="cam-live", fail=True)])
    t0 = time.monotonic()
    while "cam-live" not in page.inner_text("#live-cameras") and time.monotonic() - t0 < 5:
        page.wait_for_timeout(20)  # the page's CSP allows no eval, so no wait_for_function: poll its text
    shown_after_s = time.monotonic() - t0
    print(f"live page showed the stored part after {shown_after_s:.2f} s")
    assert shown_after_s < 1.5
    assert page.evaluate("window.__stayed === true"), "the live page reloaded instead of updating in place"
    assert not errors, errors  # the fetch is allowed by the page's CSP (connect-src 'self')
