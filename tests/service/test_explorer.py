"""The unit explorer as a real Ray Serve application on the test cluster: its JSON and binary API
against the store and the checkpoints behind it, its refusals, a store held by a writer, and the
views in headless Chromium (Selenium with Debian's chromium-driver)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import struct
import sys
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).parents[1] / "analyses"))
from analysis_helpers import make_study  # noqa: E402

from cluster.capture import load  # noqa: E402
from cluster.data.kaldi import read_corpus  # noqa: E402
from service.cli import main  # noqa: E402
from service.store import Store  # noqa: E402

pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(url: str, headers: dict | None = None):
    """(status, headers, body bytes) without raising on 4xx/5xx."""
    req = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def get_json(url: str):
    status, _, body = get(url)
    return status, json.loads(body)


def unpack(body: bytes):
    n = struct.unpack("<I", body[:4])[0]
    meta = json.loads(body[4:4 + n])
    data = np.frombuffer(body[4 + n:], dtype="<f4").reshape(len(meta["units"]), meta["frames"])
    return meta, data


@pytest.fixture(scope="module")
def explorer(ray_cluster, small_corpus, tmp_path_factory):
    from ray import serve

    from service.cli.explore import wait_healthy
    from service.explorer.app import deploy
    from service.explorer.data import ExplorerConfig
    from service.study import analyse_study

    root = tmp_path_factory.mktemp("explorer")
    make_study(root / "runs", "mini", small_corpus, [{"cell": "lstm", "layers": 2, "per": 0.30, "acc": 0.40},
                                                     {"cell": "gru", "layers": 2, "per": 0.28, "acc": 0.42, "seed": 1}])
    store = Store(root / "store.duckdb")
    analyse_study(store, root / "runs", ["mini"], root / "figures", analyses=["cell_distributions"],
                  capture={"utterances": 12, "sample": 2}, progress=lambda *a: None)
    cks = store.query("SELECT checkpoint_id, arch, path FROM checkpoints ORDER BY arch").rows_by_key("arch", unique=True)
    config = ExplorerConfig(store=str(store.path), storage=str(root / "runs"), report=str(root / "figures"),
                            utterances=12, wait=1.0)
    url = deploy(config, port=free_port())
    wait_healthy(url)
    yield {"url": url, "store": store, "lstm": cks["lstm"][0], "gru": cks["gru"][0], "lstm_path": cks["lstm"][1],
           "corpus": small_corpus, "root": root}
    serve.shutdown()


def test_overview_lists_checkpoints_and_claims_with_their_units(explorer):
    status, o = get_json(explorer["url"] + "api/overview")
    assert status == 200
    assert {c["checkpoint_id"] for c in o["checkpoints"]} == {explorer["lstm"], explorer["gru"]}
    assert {c["per"] for c in o["checkpoints"]} == {0.30, 0.28} and o["studies"] == ["mini"]
    claims = {c["key"]: c for c in o["claims"]}
    assert len(claims) == 13 and claims["gru_bounded"]["verdict"] == "holds"
    units = claims["gru_bounded"]["links"]["units"]
    assert units and {u["checkpoint_id"] for u in units} <= {explorer["lstm"], explorer["gru"]}
    figs = claims["gru_bounded"]["links"]["figures"]
    assert {f["analysis"] for f in figs} == {"cell_distributions"}
    status, headers, body = get(explorer["url"] + f"api/figure/{figs[0]['checkpoint_id']}/cell_distributions/{figs[0]['index']}")
    assert status == 200 and body[:8] == b"\x89PNG\r\n\x1a\n"


def test_unit_view_numbers_are_the_stores(explorer):
    ck = explorer["gru"]
    status, u = get_json(explorer["url"] + f"api/unit/{ck}/2/3")
    assert status == 200
    assert {s["quantity"] for s in u["stats"]} == {"c", "m", "i", "f", "o", "g"}
    want = explorer["store"].query("SELECT mean FROM unit_stats WHERE checkpoint_id = ? AND layer = 2 AND unit = 3 "
                                   "AND quantity = 'c'", [ck])["mean"][0]
    assert next(s["mean"] for s in u["stats"] if s["quantity"] == "c") == pytest.approx(want)
    hist = next(h for h in u["histograms"] if h["quantity"] == "c")
    assert sum(hist["counts"]) + hist["underflow"] + hist["overflow"] == next(s["count"] for s in u["stats"] if s["quantity"] == "c")
    assert u["responsibility"] and all(0 <= r["responsibility"] <= 1 for r in u["responsibility"])


def test_top_frames_are_the_units_largest_values_over_the_probe_set(explorer):
    ck = explorer["lstm"]
    status, top = get_json(explorer["url"] + f"api/top/{ck}/1/4?quantity=c&k=5")
    assert status == 200 and top["utterances"] == 12 and len(top["frames"]) == 5
    # recomputed here, from the checkpoint file and the corpus, with the model's own capture
    model, _ = load(explorer["lstm_path"])
    split = read_corpus(explorer["corpus"]).split("test")
    best = 0.0
    for utt_id in split.utt_ids:
        u = split.load(utt_id)
        best = max(best, float(model.capture(torch.from_numpy(u.feats), dtype=torch.float16)["L1.c"][:, 4].abs().max()))
    assert abs(top["frames"][0]["value"]) == pytest.approx(best, rel=1e-3)
    assert all(abs(a["value"]) >= abs(b["value"]) for a, b in zip(top["frames"], top["frames"][1:]))
    assert all(f["phone"] for f in top["frames"])


def test_values_from_the_stored_sample_or_captured_now(explorer):
    ck, url = explorer["lstm"], explorer["url"]
    sampled = explorer["store"].query("SELECT DISTINCT utt_id FROM raw_sample WHERE checkpoint_id = ?", [ck])["utt_id"].to_list()
    probe = get_json(url + f"api/utterances/{ck}")[1]["probe"]
    other = next(u for u in probe if u not in sampled)
    for utt, source in ((sampled[0], "sample"), (other, "capture")):
        status, _, body = get(url + f"api/values/{ck}/{utt}?layer=2&quantity=c&order=variance")
        assert status == 200
        meta, data = unpack(body)
        assert meta["source"] == source and sorted(meta["units"]) == list(range(16))
        var = data.astype(np.float64).var(axis=1)
        assert np.all(np.diff(var) <= 1e-6)  # most variable unit first
    meta, data = unpack(get(url + f"api/values/{ck}/{sampled[0]}?layer=1&quantity=f")[2])
    assert data.min() >= 0 and data.max() <= 1 and meta["units"] == list(range(16))
    status, u = get_json(url + f"api/utterance/{ck}/{other}")
    assert status == 200 and u["audio"] and u["phones"][0]["start"] == 0 and u["phones"][-1]["end"] == u["frames"]


def test_pattern_select_and_match(explorer):
    ck, url = explorer["lstm"], explorer["url"]
    utt = get_json(url + f"api/utterances/{ck}")[1]["probe"][0]
    meta, data = unpack(get(url + f"api/values/{ck}/{utt}?layer=1&quantity=o")[2])
    T = meta["frames"]
    # threshold at the span's own lowest value for one unit: that unit is on throughout the span
    unit_row = 0
    start, end = T // 3, T // 3 + 5
    threshold = float(data[unit_row, start:end].min()) - 1e-3
    status, p = get_json(url + f"api/pattern/{ck}/{utt}?layer=1&quantity=o&start={start}&end={end}"
                               f"&threshold={threshold}&outside=1")
    assert status == 200 and meta["units"][unit_row] in p["units"]
    status, m = get_json(url + f"api/match/{ck}?layer=1&quantity=o&units={','.join(map(str, p['units']))}"
                               f"&threshold={threshold}&min_share=1&min_frames=5")
    assert status == 200 and m["utterances"] == 12
    assert any(x["utt_id"] == utt and x["start"] <= start and x["end"] >= end for x in m["matches"])
    assert all(x["phones"] for x in m["matches"])


def test_audio_is_the_corpus_wav_with_ranges(explorer):
    ck, url = explorer["lstm"], explorer["url"]
    utt = get_json(url + f"api/utterances/{ck}")[1]["audio"][0]
    status, headers, body = get(url + f"api/audio/{ck}/{utt}")
    wav = (Path(explorer["corpus"]) / "test" / "wav" / f"{utt}.wav").read_bytes()
    assert status == 200 and body == wav and headers["content-type"] == "audio/wav"
    status, _, part = get(url + f"api/audio/{ck}/{utt}", {"Range": "bytes=0-99"})
    assert status == 206 and part == wav[:100]


@pytest.mark.parametrize("path, code", [
    ("api/unit/nope-1x1-0000000000/1/0", 404),  # unknown checkpoint
    ("api/unit/{lstm}/3/0", 404),  # no layer 3
    ("api/unit/{lstm}/1/16", 404),  # no unit 16
    ("api/unit/{lstm}/0/0", 400),  # layer 0 is no layer
    ("api/unit/{lstm}/x/0", 400),
    ("api/unit/..%2F..%2Fetc/1/0", 404),
    ("api/values/{lstm}/no_such_utt?layer=1", 404),
    ("api/values/{lstm}/{utt}?layer=1&quantity=zz", 400),
    ("api/values/{lstm}/{utt}?layer=1&order=responsibility", 400),  # needs a phone
    ("api/audio/{lstm}/..%2F..%2F..%2Fetc%2Fpasswd", 404),
    ("api/audio/{lstm}/%2Fetc%2Fpasswd", 404),
    ("api/figure/{lstm}/cell_distributions/99", 404),
    ("api/figure/{lstm}/..%2F..%2Fstore/0", 404),
    ("static/..%2Fdata.py", 404),
    ("static/%2Fetc%2Fpasswd", 404),
    ("..%2F..%2Fetc%2Fpasswd", 404),
    ("api/match/{lstm}?units=1;DROP&layer=1&threshold=0", 400),
    ("api/pattern/{lstm}/{utt}?layer=1&start=5&end=100000&threshold=0", 400),
])
def test_bad_ids_and_traversal_get_their_status(explorer, path, code):
    utt = get_json(explorer["url"] + f"api/utterances/{explorer['lstm']}")[1]["probe"][0]
    status, _, body = get(explorer["url"] + path.format(lstm=explorer["lstm"], utt=utt))
    assert status == code, body
    err = json.loads(body)
    assert err["status"] == code and "Traceback" not in err["error"] and "\n" not in err["error"]
    assert b"root:" not in body


def test_a_store_held_by_a_writer_answers_old_data_or_busy_then_recovers(explorer):
    store, url = explorer["store"], explorer["url"]
    overview, unit = url + "api/overview", url + f"api/unit/{explorer['gru']}/1/0"
    figure = url + f"api/figure/{explorer['gru']}/cell_distributions/0"  # reads the store on every request
    assert get(unit)[0] == 200 and get(overview)[0] == 200  # held now, valid until the store changes
    with store.transaction():
        assert get(unit)[0] == 200 and get(overview)[0] == 200  # the committed state's, still current
        status, headers, body = get(figure)
    assert status == 503 and headers.get("retry-after") == "1"
    assert json.loads(body)["error"].startswith("store busy, retrying")
    assert get(figure)[0] == 200
    store.log_started("busy-test", "x", 1)  # a commit: what the explorer holds is of an older state now
    try:
        with store.transaction():
            status, _, body = get(overview)
            assert status == 200 and json.loads(body)["stale"] is True  # the last overview, said to be old
            assert get(unit)[0] == 503
        assert get(unit)[0] == 200
    finally:
        with store.transaction() as con:
            con.execute("DELETE FROM analyses WHERE checkpoint_id = 'busy-test'")


def test_concurrent_clients_get_no_errors_and_the_overview_still_answers(explorer):
    """Eight clients at once (loopback, 15 requests each of the unit, top-frames, values and
    overview views): every answer is a 200, and afterwards the overview still answers."""
    from concurrent.futures import ThreadPoolExecutor

    url, ck = explorer["url"], explorer["lstm"]
    utts = get_json(url + f"api/utterances/{ck}")[1]["probe"]
    paths = [f"api/unit/{ck}/{1 + k % 2}/{k % 16}" if k % 4 == 0 else
             f"api/top/{explorer['gru']}/{1 + k % 2}/{k % 16}?k=5" if k % 4 == 1 else
             f"api/values/{ck}/{utts[k % len(utts)]}?layer=1&quantity=c&order=variance" if k % 4 == 2 else
             "api/overview" for k in range(8 * 15)]
    with ThreadPoolExecutor(8) as pool:
        statuses = list(pool.map(lambda p: (get(url + p)[0], p), paths))
    assert [s for s in statuses if s[0] != 200] == []
    status, o = get_json(url + "api/overview")
    assert status == 200 and len(o["claims"]) == 13

def test_a_hostile_store_serves_nothing_outside_and_loads_no_code(explorer):
    store, ck, url = explorer["store"], explorer["lstm"], explorer["url"]
    evil = "lstm-1x16-0000000000"
    with store.transaction() as con:
        con.execute("INSERT INTO analyses (checkpoint_id, analysis, analysis_version, status, figure_paths) "
                    "VALUES (?, 'evil', 1, 'finished', ?)",
                    [ck, ["/etc/passwd", str(store.path), str(store.path.parent / "missing.png"), "../../x.png"]])
    store.register_checkpoint({"checkpoint_id": evil, "path": "/etc/passwd", "arch": "lstm", "layers": 1, "hidden": 16})
    try:
        for k in range(4):
            status, _, body = get(url + f"api/figure/{ck}/evil/{k}")
            assert status == 404 and b"root:" not in body, body
        status, _, body = get(url + f"api/top/{evil}/1/0")
        assert status in (400, 404) and b"Traceback" not in body and b"root:" not in body, body
    finally:
        with store.transaction() as con:
            con.execute("DELETE FROM analyses WHERE analysis = 'evil'")
            con.execute("DELETE FROM checkpoints WHERE checkpoint_id = ?", [evil])


def test_cli_refuses_bad_arguments(explorer, tmp_path, capsys):
    assert main(["explore", "--store", str(tmp_path / "missing.duckdb")]) == 2
    assert "missing.duckdb" in capsys.readouterr().err
    for argv in (["--port", "70000"], ["--host", "http://x/"]):
        with pytest.raises(SystemExit) as e:
            main(["explore", *argv])
        assert e.value.code == 2


# ---- the views in a real browser ---------------------------------------------------------------

@pytest.fixture(scope="module")
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    driver_exe = shutil.which("chromedriver")
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if driver_exe is None or exe is None:
        pytest.fail("chromium and chromium-driver are not installed: `make test` installs them (apt-get)")
    opts = webdriver.ChromeOptions()
    opts.binary_location = exe
    for a in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1400,1000",
              "--autoplay-policy=no-user-gesture-required", "--mute-audio"):
        opts.add_argument(a)
    driver = webdriver.Chrome(options=opts, service=Service(driver_exe))
    yield driver
    driver.quit()


def ready(driver, view: str, timeout: float = 60):
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(driver, timeout).until(lambda d: d.find_element("tag name", "body").get_attribute("data-ready") in ("1", "error"))
    body = driver.find_element("tag name", "body")
    assert body.get_attribute("data-ready") == "1", driver.find_element("id", "main").text[:500]
    assert body.get_attribute("data-view") == view


def test_browser_claim_to_unit_to_frame_to_audio_to_match(explorer, browser):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.support.ui import WebDriverWait

    d = browser
    d.get(explorer["url"])
    ready(d, "overview")
    claim = d.find_element("css selector", '[data-claim="gru_bounded"]')
    assert claim.get_attribute("data-verdict") == "holds"
    links = claim.find_element("css selector", "details.links")  # collapsed: the claims read as a list
    assert links.get_attribute("open") is None and not claim.find_element("css selector", "a.unit-link").is_displayed()
    links.find_element("tag name", "summary").click()
    claim.find_element("css selector", "a.unit-link").click()
    ready(d, "unit")
    hists = d.find_elements("css selector", "canvas.hist")
    assert len(hists) == 6 and all(h.get_attribute("data-drawn") == "1" for h in hists)
    resp = d.find_elements("css selector", 'canvas.resp[data-drawn="1"]')
    assert resp
    for cv in resp:  # the phone labels drawn do not overlap
        boxes = json.loads(cv.get_attribute("data-labels"))
        assert boxes and all(a[1] < b[0] for a, b in zip(boxes, boxes[1:]))
    d.find_element("css selector", "tr.top-frame a").click()
    ready(d, "utterance")
    assert d.find_element("css selector", 'canvas.heatmap').get_attribute("data-drawn") == "1"
    assert d.find_element("css selector", 'canvas.spectrogram').get_attribute("data-drawn") == "1"
    WebDriverWait(d, 30).until(lambda d: d.execute_script("return document.getElementById('audio').readyState") >= 1)
    assert d.execute_script("return document.getElementById('audio').duration") > 0.2
    # brush the whole utterance with every unit on: all are selected, and match lists utterances
    d.execute_script("document.querySelector('#controls [name=threshold]').value = '-100'")
    over = d.find_element("css selector", "canvas.overlay")
    w = over.size["width"]
    ActionChains(d).move_to_element_with_offset(over, -w // 2 + 1, 0).click_and_hold() \
        .move_to_element_with_offset(over, w // 2 - 1, 0).release().perform()
    WebDriverWait(d, 30).until(lambda d: d.find_elements("id", "selected"))
    assert len(d.find_element("id", "selected").get_attribute("data-units").split(",")) == 16
    d.find_element("id", "match").click()
    WebDriverWait(d, 30).until(lambda d: d.find_elements("css selector", "#match-list tr.match"))
    assert len(d.find_elements("css selector", "#match-list tr.match")) >= 2


def test_browser_compare_and_bad_ids(explorer, browser):
    d = browser
    utt = get_json(explorer["url"] + f"api/utterances/{explorer['lstm']}")[1]["probe"][0]
    d.get(explorer["url"] + f"compare?a={explorer['lstm']}&b={explorer['gru']}&utt={utt}&layer=2&quantity=c")
    ready(d, "compare")
    assert len(d.find_elements("css selector", 'canvas.heatmap[data-drawn="1"]')) == 2
    d.get(explorer["url"] + "unit?checkpoint=nope-1x1-0000000000&layer=1&unit=0")
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(d, 30).until(lambda d: d.find_element("tag name", "body").get_attribute("data-ready") == "error")
    assert "no checkpoint" in d.find_element("id", "error").text


def test_browser_shows_store_busy_then_the_view(explorer, browser):
    import threading

    from selenium.webdriver.support.ui import WebDriverWait

    held, release = threading.Event(), threading.Event()
    explorer["store"].log_started("busy-test", "x", 1)  # a commit: the unit's held rows are stale

    def writer():
        with explorer["store"].transaction():
            held.set()
            release.wait(30)

    t = threading.Thread(target=writer)
    t.start()
    try:
        held.wait(30)
        browser.get(explorer["url"] + f"unit?checkpoint={explorer['gru']}&layer=1&unit=0")
        WebDriverWait(browser, 30).until(lambda d: "store busy, retrying" in d.find_element("id", "status").text)
    finally:
        release.set()
        t.join()
        with explorer["store"].transaction() as con:
            con.execute("DELETE FROM analyses WHERE checkpoint_id = 'busy-test'")
    ready(browser, "unit")
    assert browser.find_element("id", "status").text == ""


def test_views_keep_answering_while_a_watcher_pass_ingests_and_new_checkpoints_appear(explorer, tmp_path):
    """A real watcher pass captures, analyses and ingests a new checkpoint into the served store
    while clients keep asking: every answer is a 200 or a 503 (store busy, retry), never a 500;
    the new checkpoint then appears in the overview without a restart. (Last: it adds a checkpoint.)"""
    import threading
    import time

    from service.scheduler import WatchConfig, run_pass
    from tests_helpers import make_checkpoint

    url, ck = explorer["url"], explorer["lstm"]
    new = make_checkpoint(explorer["corpus"], tmp_path / "runs" / "w" / "runs" / "gru_run" / "checkpoint_000000"
                          / "model.pt", "gru", 5)
    old = time.time() - 120
    os.utime(new, (old, old))
    config = WatchConfig(storage=str(tmp_path / "runs"), store=str(explorer["store"].path),
                         figures=str(tmp_path / "figures"), utterances=6, sample=1, settle=1.0,
                         analyses=["cell_distributions"]).resolved()
    done, statuses = threading.Event(), []

    def client(k: int) -> None:
        paths = ["api/overview", f"api/unit/{ck}/1/{k}", f"api/top/{ck}/2/{k}?k=3"]
        n = 0
        while not done.is_set() or n < 3:
            statuses.append((get(url + paths[n % 3])[0], paths[n % 3]))
            n += 1
            time.sleep(0.05)

    clients = [threading.Thread(target=client, args=(k,)) for k in range(4)]
    for c in clients:
        c.start()
    try:
        report = run_pass(config, progress=print)
    finally:
        done.set()
        for c in clients:
            c.join(60)
    assert report.error is None and len(report.done) == 1, report
    assert statuses and {s for s, _ in statuses} <= {200, 503}, [s for s in statuses if s[0] not in (200, 503)]
    assert sum(s == 200 for s, _ in statuses) > len(statuses) / 2
    deadline = time.time() + 30
    while time.time() < deadline:
        o = get_json(url + "api/overview")[1]
        if report.done[0] in {c["checkpoint_id"] for c in o["checkpoints"]} and not o["stale"]:
            break
        time.sleep(0.5)
    assert report.done[0] in {c["checkpoint_id"] for c in o["checkpoints"]}
    status, u = get_json(url + f"api/unit/{report.done[0]}/1/0")
    assert status == 200 and u["stats"]
