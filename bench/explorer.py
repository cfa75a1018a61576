"""Speed of the unit explorer on the demo store, served by Ray Serve as `gatelens explore` serves it.

Works on a copy of the store (the demo's is never written), to which it adds one paper-shaped
checkpoint (untrained LSTM, 4 x 512, captured over 20 test utterances) so the heatmap can be
512 units wide. Prints, with the baseline measured in the same run:

  baseline     a plain `gatelens sql` query (in process: ``run_query``; and the command's wall time)
  JSON         p50 / p95 of every endpoint the unit and utterance views call (warm), and the
               p95's ratio to the in-process query; the unit view's first request per checkpoint
               (which reads that checkpoint's rows from the store) apart
  capture      an on-demand capture of one utterance through /api/values (first request for an
               utterance the store holds no sample of), against the model's own capture call
  clients      ``--clients`` at once on the unit, top-frames, values and overview views: errors,
               and each view's p50 / p95 beside its single-client p95 (targets: no errors, the
               unit view's p95 at most 2x, the overview's under 100 ms); once with a connection
               per request (urllib), then with one kept-alive connection per client (a browser's)
  heatmap      512 units x the longest test utterance's frames, fetched and drawn in headless
               Chromium (the page's own timings: fetch, then draw)

    .venv/bin/python bench/explorer.py [--store data/gatelens.duckdb] [--storage data/runs]
                                       [--requests 40] [--clients 8] [--screenshots docs/explorer]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

if sys.path and Path(sys.path[0]).resolve() == Path(__file__).resolve().parent:
    sys.path.pop(0)  # this folder's service.py would hide the service package

import numpy as np  # noqa: E402
import torch  # noqa: E402


def timed_get(url: str) -> tuple[float, bytes]:
    t0 = time.perf_counter()
    with urllib.request.urlopen(url, timeout=120) as r:
        body = r.read()
    return (time.perf_counter() - t0) * 1000, body


class KeptConnection:
    """One HTTP/1.1 connection reused for every request, as a browser keeps its connection to a
    site open (``timed_get`` opens one per request, as urllib does)."""

    def __init__(self, url: str):
        import http.client
        from urllib.parse import urlsplit

        self._http, parts = http.client, urlsplit(url)
        self.host, self.port, self.conn = parts.hostname, parts.port, None

    def get(self, path: str) -> tuple[float, int]:
        """(milliseconds, HTTP status) of GET /path, reconnecting once if the server closed it."""
        for attempt in (0, 1):
            if self.conn is None:
                self.conn = self._http.HTTPConnection(self.host, self.port, timeout=120)
            t0 = time.perf_counter()
            try:
                self.conn.request("GET", "/" + path)
                r = self.conn.getresponse()
                r.read()
                return (time.perf_counter() - t0) * 1000, r.status
            except (self._http.HTTPException, OSError):
                self.conn.close()
                self.conn = None
                if attempt:
                    raise
        raise AssertionError("unreachable")


def pct(xs: list[float], p: float) -> float:
    return float(np.percentile(xs, p))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def paper_checkpoint(corpus_dir: Path, path: Path) -> Path:
    from cluster.data.kaldi import read_corpus
    from cluster.models import ModelConfig, build_model, save_checkpoint

    corpus = read_corpus(corpus_dir)
    torch.manual_seed(0)
    model = build_model(ModelConfig(cell="lstm", layers=4, hidden=512, num_targets=corpus.num_targets),
                        corpus.cmvn_mean, corpus.cmvn_std)
    path.parent.mkdir(parents=True, exist_ok=True)
    return save_checkpoint(path, model, corpus.identity, extra={"metrics": {"epoch": 0},
                                                                "stamps": {"config": {"corpus": str(corpus_dir)}}})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--store", default="data/gatelens.duckdb")
    ap.add_argument("--storage", default="data/runs")
    ap.add_argument("--corpus", default="data/corpus")
    ap.add_argument("--requests", type=int, default=40)
    ap.add_argument("--clients", type=int, default=8, help="concurrent clients after the single-client figures")
    ap.add_argument("--no-browser", action="store_true", help="skip the heatmap in Chromium")
    ap.add_argument("--screenshots", help="write a PNG of each view (the demo store's) here")
    args = ap.parse_args()

    from cluster.capture import CaptureConfig, capture, load
    from cluster.data.kaldi import read_corpus
    from cluster.runtime import ensure_ray, log_ray_to, machine
    from cluster.summaries import SUMMARY_VERSION
    from cluster.tables import CAPTURE
    from service.cli.explore import wait_healthy
    from service.explorer.app import deploy
    from service.explorer.data import ExplorerConfig
    from service.sql import run_query
    from service.store import Store

    src = Store(args.store)
    if not src.path.is_file():
        sys.exit(f"bench/explorer.py: no store at {src.path}: run `make demo` first")
    tmp = Path(tempfile.mkdtemp(prefix="gatelens-explorer-bench-"))
    try:
        shutil.copy(src.path, tmp / "store.duckdb")
        if src.samples_dir.is_dir():
            shutil.copytree(src.samples_dir, tmp / "store.samples")
        store = Store(tmp / "store.duckdb")
        log = log_ray_to(tmp / "logs", "bench-explorer")
        print(f"machine: {machine()}, torch {torch.__version__}, {torch.get_num_threads()} threads; "
              f"load average {os.getloadavg()[0]:.2f}; Ray's messages: {log}")
        private = ensure_ray()

        # the paper's shape, for a 512-unit heatmap
        big = paper_checkpoint(Path(args.corpus).resolve(), tmp / "paper" / "checkpoint_0" / "model.pt")
        res = capture(CaptureConfig(checkpoint=str(big), utterances=20, sample=0))
        store.ingest(res.checkpoint_id, CAPTURE, SUMMARY_VERSION, res.frames, params=res.params,
                     checkpoint=res.checkpoint_row)
        big_id = res.checkpoint_id

        # baseline: a plain `gatelens sql` query
        sql = "SELECT quantity, mean, variance FROM unit_stats WHERE layer = 1 AND unit = 3 LIMIT 10"
        base = []
        for _ in range(args.requests):
            t0 = time.perf_counter()
            run_query(sql, store)
            base.append((time.perf_counter() - t0) * 1000)
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-m", "service.cli", "sql", "--store", str(store.path), sql],
                       check=True, capture_output=True)
        cli_ms = (time.perf_counter() - t0) * 1000
        base_p95 = pct(base, 95)
        print(f"baseline  gatelens sql query: in process p50 {pct(base, 50):.1f} ms, p95 {base_p95:.1f} ms; "
              f"the command {cli_ms:.0f} ms wall")

        url = deploy(ExplorerConfig(store=str(store.path), storage=str(Path(args.storage).resolve()),
                                    utterances=40), port=free_port(), autoscale=not private)
        print(f"explorer  on {'a private cluster: one replica' if private else 'a shared head: autoscaling replicas'}")
        wait_healthy(url)
        cks = json.loads(timed_get(url + "api/overview")[1])["checkpoints"]
        demo = [c for c in cks if c["checkpoint_id"] != big_id]
        ck = demo[0]["checkpoint_id"]
        probe = json.loads(timed_get(url + f"api/utterances/{ck}")[1])["probe"]
        sampled = {r[0] for r in store.query("SELECT DISTINCT utt_id FROM raw_sample WHERE checkpoint_id = ?",
                                             [ck]).rows()} if store.has_relation("raw_sample") else set()
        fresh = [u for u in probe if u not in sampled]

        # on-demand capture: the first /api/values of an utterance, against the model's own capture
        first = [timed_get(url + f"api/values/{ck}/{u}?layer=1&quantity=c")[0] for u in fresh[:10]]
        model, _ = load(store.query("SELECT path FROM checkpoints WHERE checkpoint_id = ?", [ck])["path"][0])
        split = read_corpus(args.corpus).split("test")
        own = []
        torch.set_num_threads(1)  # as the replica runs
        for u in fresh[:10]:
            x = torch.from_numpy(split.load(u).feats)
            t0 = time.perf_counter()
            model.capture(x, dtype=torch.float16)
            own.append((time.perf_counter() - t0) * 1000)
        print(f"capture   one utterance on demand ({demo[0]['arch']} {demo[0]['layers']}x{demo[0]['hidden']}): "
              f"median {statistics.median(first):.0f} ms, max {max(first):.0f} ms; the model's own capture "
              f"median {statistics.median(own):.1f} ms (ratio {statistics.median(first) / statistics.median(own):.1f}x)")

        # the unit view's first request for each checkpoint: one read of its rows from the store
        cold = [timed_get(url + f"api/unit/{c['checkpoint_id']}/1/0")[0] for c in demo]
        print(f"JSON      unit, first request per checkpoint (reads its rows): median {statistics.median(cold):.0f} ms, "
              f"max {max(cold):.0f} ms over {len(cold)} checkpoints")

        # warm JSON endpoints of the unit and utterance views
        utt, H = probe[0], min(50, demo[0]["hidden"])
        endpoints = {
            "unit": lambda k: f"api/unit/{ck}/{1 + k % demo[0]['layers']}/{k % demo[0]['hidden']}",
            "top": lambda k: f"api/top/{ck}/{1 + k % demo[0]['layers']}/{k % demo[0]['hidden']}?quantity=c&k=12",
            "utterance": lambda k: f"api/utterance/{ck}/{probe[k % len(probe)]}",
            "values": lambda k: f"api/values/{ck}/{probe[k % len(probe)]}?layer=1&quantity=c&order=variance",
            "pattern": lambda k: f"api/pattern/{ck}/{utt}?layer=1&quantity=o&start=20&end=30&threshold=0.6",
            "match": lambda k: f"api/match/{ck}?layer=1&quantity=o&units={k % H},{(k + 7) % H}&threshold=0.6",
            "overview": lambda k: "api/overview",
        }
        single = {}
        for name, path in endpoints.items():
            timed_get(url + path(0))  # warm: the probe set is captured once per checkpoint
            ms = [timed_get(url + path(k))[0] for k in range(args.requests)]
            single[name] = ms
            print(f"JSON      {name:<10} p50 {pct(ms, 50):6.1f} ms  p95 {pct(ms, 95):6.1f} ms  "
                  f"({pct(ms, 95) / base_p95:.1f}x the query's p95){'  < 100 ms' if pct(ms, 95) < 100 else ''}")
        if args.clients > 1:
            views = {k: endpoints[k] for k in ("unit", "top", "values", "overview")}
            concurrent(url, views, single, args.clients, args.requests)
            # the same, each client on one kept-alive connection (as a browser's page): single, then all
            conn, kept = KeptConnection(url), {}
            for name, path in views.items():
                conn.get(path(0))
                kept[name] = [conn.get(path(k))[0] for k in range(args.requests)]
            print("kept-alive connections (one per client, as a browser keeps its connection):")
            for name, ms in kept.items():
                print(f"JSON      {name:<10} p50 {pct(ms, 50):6.1f} ms  p95 {pct(ms, 95):6.1f} ms  (one client)")
            concurrent(url, views, kept, args.clients, args.requests, keep_alive=True)

        # the 512-unit heatmap in a browser
        if args.no_browser:
            print(f"load average after: {os.getloadavg()[0]:.2f}")
            return
        longest = max(split.utt_ids, key=lambda u: len(split.alignments[u].phones))
        frames = len(split.alignments[longest].phones)
        driver = browser()
        try:
            times = []
            for _ in range(5):
                driver.get(url + f"utterance?checkpoint={big_id}&utt={longest}&layer=4&quantity=c")
                wait_ready(driver)
                layer = driver.find_element("css selector", "#layer > div")
                heat = driver.find_element("css selector", "canvas.heatmap")
                times.append((float(layer.get_attribute("data-fetch-ms")), float(heat.get_attribute("data-draw-ms"))))
            fetch, draw = min(times, key=sum)
            print(f"heatmap   512 units x {frames} frames in Chromium: fetched {fetch:.0f} ms + drawn {draw:.0f} ms "
                  f"= {fetch + draw:.0f} ms (best of 5; {(fetch + draw) / base_p95:.0f}x the query's p95)"
                  f"{'  < 1 s' if fetch + draw < 1000 else ''}")
            if args.screenshots:
                shots(driver, url, Path(args.screenshots), ck, probe[0], demo)
        finally:
            driver.quit()
        print(f"load average after: {os.getloadavg()[0]:.2f}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def concurrent(url: str, endpoints: dict, single: dict, clients: int, requests: int, keep_alive: bool = False) -> None:
    """``clients`` threads at once, each ``requests`` requests cycling through ``endpoints``: each
    endpoint's p50 / p95 beside its single-client p95 (measured just before, the same way), and
    every answer that was not a 200 (a 503 is the store busy; nothing writes it here, so any is an
    error). ``keep_alive``: each client sends its requests over one kept connection."""
    import threading
    import urllib.error

    names = list(endpoints)
    times: dict[str, list[float]] = {n: [] for n in names}
    errors: list[str] = []
    lock = threading.Lock()

    def client(c: int) -> None:
        conn = KeptConnection(url) if keep_alive else None
        for k in range(requests):
            name = names[(c + k) % len(names)]
            try:
                if conn is not None:
                    ms, status = conn.get(endpoints[name](c * requests + k))
                    if status != 200:
                        with lock:
                            errors.append(f"{name}: {status}")
                        continue
                else:
                    ms, _ = timed_get(url + endpoints[name](c * requests + k))
            except urllib.error.HTTPError as e:
                with lock:
                    errors.append(f"{name}: {e.code}")
                continue
            with lock:
                times[name].append(ms)

    t0 = time.perf_counter()
    threads = [threading.Thread(target=client, args=(c,)) for c in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    total = clients * requests
    print(f"clients   {clients} at once{' (kept-alive)' if keep_alive else ''}, {requests} requests each "
          f"({total} in {wall:.1f} s, "
          f"{total / wall:.0f} requests/s): {len(errors)} errors{': ' + ', '.join(errors[:8]) if errors else ''}")
    for name in names:
        ms, one = times[name], pct(single[name], 95)
        if not ms:
            continue
        ratio = pct(ms, 95) / one
        target = ("  (target <= 2x: " + ("met" if ratio <= 2 else "NOT met") + ")" if name == "unit" else
                  "  (target < 100 ms: " + ("met" if pct(ms, 95) < 100 else "NOT met") + ")" if name == "overview" else "")
        print(f"clients   {name:<10} p50 {pct(ms, 50):6.1f} ms  p95 {pct(ms, 95):6.1f} ms  "
              f"single-client p95 {one:6.1f} ms  ratio {ratio:.1f}x{target}")


def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = shutil.which("chromium")
    for a in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1400,1100", "--mute-audio"):
        opts.add_argument(a)
    return webdriver.Chrome(options=opts, service=Service(shutil.which("chromedriver")))


def wait_ready(driver, timeout: float = 120):
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(driver, timeout).until(lambda d: d.find_element("tag name", "body").get_attribute("data-ready"))
    if driver.find_element("tag name", "body").get_attribute("data-ready") != "1":
        raise RuntimeError(driver.find_element("id", "main").text[:300])


def shots(driver, url: str, out: Path, ck: str, utt: str, demo: list[dict]) -> None:
    """A PNG of each view of the demo store, for the README."""
    from selenium.webdriver.common.action_chains import ActionChains

    out.mkdir(parents=True, exist_ok=True)
    other = next((c["checkpoint_id"] for c in demo if c["arch"] != demo[0]["arch"]), demo[-1]["checkpoint_id"])
    views = {"overview": "", "unit": f"unit?checkpoint={ck}&layer=1&unit=5",
             "utterance": f"utterance?checkpoint={ck}&utt={utt}&layer=1&quantity=o&order=cluster&threshold=0.6",
             "compare": f"compare?a={ck}&b={other}&utt={utt}&layer=1&quantity=c"}
    for name, path in views.items():
        driver.get(url + path)
        wait_ready(driver)
        if name == "utterance":  # brush a span and match it, as a person would
            over = driver.find_element("css selector", "canvas.overlay")
            w = over.size["width"]
            ActionChains(driver).move_to_element_with_offset(over, -w // 6, 0).click_and_hold() \
                .move_to_element_with_offset(over, -w // 10, 0).release().perform()
            time.sleep(1.5)
            found = driver.find_elements("id", "match")
            if found:
                found[0].click()
                time.sleep(2)
        height = driver.execute_script("return document.body.scrollHeight")
        driver.set_window_size(1400, min(2400, max(900, height)))
        driver.save_screenshot(str(out / f"{name}.png"))
        driver.set_window_size(1400, 1100)
        print(f"screenshot {out / f'{name}.png'}")


if __name__ == "__main__":
    main()
