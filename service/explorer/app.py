"""The unit explorer's HTTP layer: a FastAPI app, deployed as one Ray Serve application.

Pages (one ``index.html``; the script draws the view its path names, so every view is a URL):

    /                                        overview: studies, runs, checkpoints, claims
    /unit?checkpoint=&layer=&unit=            a unit: distributions, responsibility, top frames
    /utterance?checkpoint=&utt=&layer=&quantity=&order=&phone=&frame=
                                             spectrogram, phones, units x frames, audio, pattern select
    /compare?a=&b=&utt=&layer=&quantity=     two checkpoints on one utterance

JSON under ``/api/`` (``Explorer`` in ``data.py`` answers each); ``/api/values`` is binary:
a little-endian uint32 n, n bytes of JSON metadata, padding to 4 bytes, then [H, T] float32.
Errors are one line of JSON ``{"error": ...}``: 404 unknown id or file, 400 bad argument,
503 store busy (with ``Retry-After``), 500 anything else, never a traceback.
"""

from __future__ import annotations

import json
import logging
import struct
from pathlib import Path

import torch
from fastapi import FastAPI, Path as PathParam, Query, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from ray import serve

from cluster.errors import BusyError, InputError
from service.explorer.data import Explorer, ExplorerConfig, NotFound

APP_NAME = "gatelens-explorer"
STATIC = Path(__file__).parent / "static"
STATIC_FILES = {"explorer.js": "text/javascript", "explorer.css": "text/css"}
PAGES = ("/", "/unit", "/utterance", "/compare")
log = logging.getLogger("gatelens.explorer")

app = FastAPI(title="gatelens unit explorer", docs_url=None, redoc_url=None, openapi_url=None)


def _error(status: int, message: str, **headers) -> JSONResponse:
    return JSONResponse({"error": message.splitlines()[0] if message else "error", "status": status},
                        status_code=status, headers=headers)


@app.exception_handler(NotFound)
async def _not_found(request: Request, e: NotFound):
    return _error(404, str(e))


@app.exception_handler(BusyError)
async def _busy(request: Request, e: BusyError):
    return _error(503, f"store busy, retrying: {e}", **{"Retry-After": "1"})


@app.exception_handler(InputError)
async def _bad(request: Request, e: InputError):
    if isinstance(e, BusyError):  # StoreBusy is both; the handler is chosen by the first base
        return await _busy(request, e)
    return _error(400, str(e))


@app.exception_handler(RequestValidationError)
async def _invalid(request: Request, e: RequestValidationError):
    first = e.errors()[0] if e.errors() else {}
    where = ".".join(str(x) for x in first.get("loc", ()) if x != "query")
    return _error(400, f"argument {where}: {first.get('msg', 'invalid')}")


@app.exception_handler(Exception)
async def _crash(request: Request, e: Exception):
    log.exception("explorer request %s failed", request.url.path)
    return _error(500, f"{type(e).__name__}: {e}")


class _JSON(JSONResponse):
    """Starlette's JSONResponse, skipping the ``jsonable_encoder`` walk FastAPI gives a returned
    dict first (2 ms of a 41 kB overview's 2.3 ms on a 2-core AVX-512 EPYC, about a tenth of a
    request's CPU under load); the walk runs only for content json cannot write by itself (a date, a path)."""

    def render(self, content) -> bytes:
        try:
            return super().render(content)
        except TypeError:
            return super().render(jsonable_encoder(content))


def _binary(meta: dict, data) -> Response:
    head = json.dumps(meta).encode()
    head += b" " * (-(len(head) + 4) % 4)
    return Response(struct.pack("<I", len(head)) + head + data.astype("<f4").tobytes(),
                    media_type="application/octet-stream", headers={"Cache-Control": "no-store"})


Layer = Query(ge=1, le=64)  # a query parameter
LayerP, UnitP = PathParam(ge=1, le=64), PathParam(ge=0, le=65535)  # the same, in the path
Threshold = Query(ge=-1e6, le=1e6)


# Requests one replica takes at once: FastAPI runs each in a thread of its pool. Most views answer
# from memory (the overview, a unit's rows) or capture under one model's lock, so a few threads
# keep a replica busy; beyond that, requests queue at Serve's proxy instead of in the replica.
MAX_ONGOING = 8
# On a shared head the explorer scales with its users: a replica more while each has more than
# TARGET_ONGOING requests in flight, up to MAX_REPLICAS (each holds its own loaded checkpoints).
TARGET_ONGOING, MAX_REPLICAS = 4, 4


@serve.deployment(name="explorer", num_replicas=1, ray_actor_options={"num_cpus": 0},
                  max_ongoing_requests=MAX_ONGOING, health_check_period_s=5)
@serve.ingress(app)
class ExplorerIngress:
    """A replica: its ``Explorer`` keeps the last few checkpoints loaded. No CPU reserved: it
    answers people, and must not keep a grid's trials from their CPUs."""

    def __init__(self, config: dict):
        torch.set_num_threads(1)  # one request's capture should not take every core from a running grid
        self.x = Explorer(ExplorerConfig(**config))
        self.x.refresh_overview(background=True)  # ready before the first visitor asks
        self._overview_json: tuple[object, Response] | None = None  # the overview last written, and its JSON

    @app.get("/api/health")
    def health(self) -> dict:
        return {"ok": True, "store": str(self.x.store.path)}

    @app.get("/api/overview")
    def overview(self) -> Response:
        ov, have = self.x.overview(), self._overview_json  # the same object until the store changes
        if have is None or have[0] is not ov:
            have = self._overview_json = (ov, _JSON(ov).body)
        return Response(have[1], media_type="application/json")

    @app.get("/api/unit/{checkpoint}/{layer}/{unit}")
    def unit(self, checkpoint: str, layer: int = LayerP, unit: int = UnitP) -> Response:
        return _JSON(self.x.unit(checkpoint, layer, unit))

    @app.get("/api/top/{checkpoint}/{layer}/{unit}")
    def top(self, checkpoint: str, layer: int = LayerP, unit: int = UnitP, quantity: str = "c",
            k: int = Query(10, ge=1, le=100), by: str = Query("abs", pattern="^(abs|high|low)$")) -> Response:
        return _JSON(self.x.top(checkpoint, layer, unit, quantity, k, by))

    @app.get("/api/utterances/{checkpoint}")
    def utterances(self, checkpoint: str) -> Response:
        return _JSON(self.x.utterances(checkpoint))

    @app.get("/api/utterance/{checkpoint}/{utt}")
    def utterance(self, checkpoint: str, utt: str) -> Response:
        return _JSON(self.x.utterance(checkpoint, utt))

    @app.get("/api/values/{checkpoint}/{utt}")
    def values(self, checkpoint: str, utt: str, layer: int = Layer, quantity: str = "c",
               order: str = Query("index", pattern="^(index|variance|cluster|responsibility)$"),
               phone: str | None = Query(None, max_length=32)) -> Response:
        meta, data = self.x.values(checkpoint, utt, layer, quantity, order, phone)
        return _binary(meta, data)

    @app.get("/api/pattern/{checkpoint}/{utt}")
    def pattern(self, checkpoint: str, utt: str, start: int = Query(ge=0), end: int = Query(ge=1),
                layer: int = Layer, quantity: str = "c", threshold: float = Threshold,
                inside: float = Query(0.9, ge=0, le=1), outside: float = Query(0.1, ge=0, le=1)) -> Response:
        return _JSON(self.x.pattern(checkpoint, utt, layer, quantity, start, end, threshold, inside, outside))

    @app.get("/api/match/{checkpoint}")
    def match(self, checkpoint: str, units: str = Query(max_length=4000, pattern=r"^\d+(,\d+)*$"),
              layer: int = Layer, quantity: str = "c", threshold: float = Threshold,
              min_share: float = Query(0.8, gt=0, le=1), min_frames: int = Query(3, ge=1, le=1000)) -> Response:
        return _JSON(self.x.match(checkpoint, layer, quantity, [int(u) for u in units.split(",")], threshold,
                                  min_share, min_frames))

    @app.get("/api/audio/{checkpoint}/{utt}")
    def audio(self, checkpoint: str, utt: str) -> FileResponse:
        return FileResponse(self.x.audio_path(checkpoint, utt), media_type="audio/wav")

    @app.get("/api/figure/{checkpoint}/{analysis}/{index}")
    def figure(self, checkpoint: str, analysis: str, index: int = PathParam(ge=0, le=1000)) -> FileResponse:
        return FileResponse(self.x.figure_path(checkpoint, analysis, index), media_type="image/png")

    @app.get("/static/{name}")
    def static(self, name: str) -> FileResponse:
        if name not in STATIC_FILES:
            raise NotFound(f"no static file {name!r}")
        return FileResponse(STATIC / name, media_type=STATIC_FILES[name])

    @app.get("/")
    @app.get("/unit")
    @app.get("/utterance")
    @app.get("/compare")
    def page(self) -> FileResponse:
        return FileResponse(STATIC / "index.html", media_type="text/html")

    @app.get("/{rest:path}")
    def unknown(self, rest: str):
        raise NotFound(f"no page /{rest[:80]}")


def deploy(config: ExplorerConfig, host: str = "127.0.0.1", port: int = 8000, autoscale: bool = False) -> str:
    """Deploy (or redeploy) the explorer on the Ray cluster this process is connected to; returns
    its URL. ``autoscale`` (on a shared head): ``num_replicas="auto"`` from one replica up to
    ``MAX_REPLICAS`` as requests in flight grow. Serve's HTTP options belong to the cluster: where
    Serve already runs, its host and port stay (Serve says so in its log) and the URL names them,
    not the ones asked for."""
    serve.start(http_options={"host": host, "port": port})
    deployment = ExplorerIngress
    if autoscale:
        deployment = ExplorerIngress.options(
            num_replicas="auto", max_ongoing_requests=MAX_ONGOING,
            autoscaling_config={"min_replicas": 1, "initial_replicas": 1, "max_replicas": MAX_REPLICAS,
                                "target_ongoing_requests": TARGET_ONGOING})
    serve.run(deployment.bind(vars(config)), name=APP_NAME, route_prefix="/", blocking=False)
    try:  # the options Serve actually runs with (no public API reads them back)
        http = serve.context._get_global_client().http_config
        host, port = http.host, http.port
    except AttributeError:
        pass
    return f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{port}/"


def quiet_serve() -> None:
    """Serve gives its logger ("ray.serve") a console handler when it starts; send it where the
    command sent Ray's other messages (``cluster.runtime.log_ray_to``)."""
    ray_log, serve_log = logging.getLogger("ray"), logging.getLogger("ray.serve")
    if ray_log.handlers:
        for h in list(serve_log.handlers):
            serve_log.removeHandler(h)
        for h in ray_log.handlers:
            serve_log.addHandler(h)
        serve_log.propagate = False


def undeploy() -> bool:
    """Remove the explorer from the cluster; False if it was not deployed."""
    if APP_NAME not in serve.status().applications:
        return False
    serve.delete(APP_NAME)
    return True
