"""The semantic search app: the paper's point-and-search workflow (Extended Data Figure 9) in a browser.

Pick a source scan and one or more targets, scroll the source, click a point, run: each target shows
its best-matching box and the similarity heatmap over the CT. The search is
:mod:`ctfm.analysis.search` itself (pooled method): the encoder runs over each scan once and its passes
stay in memory (:func:`ctfm.analysis.patch_embeddings.shifted_feature_map`), so a second query on a
target only pools and compares.

The query box is placed on the nearest window of the source's own window grid (every ``stride``
voxels), so a query reuses the source's passes instead of running the encoder again; the page shows
the box's centre, and ``ctfm search --point <that centre> --point-space mm`` gives the same query.

A target the encoder has not seen yet first gets a coarse match, the same search on copies of source
and target with the in-plane resolution halved (where the box stays a multiple of 16 voxels there) and
windows every 16 voxels: a quarter of an encoder pass each instead of the default stride's full pass and
its continuation (the map shifted by 8 voxels along S). The page shows it marked "coarse" at once; the
full search then replaces it with the final match, the one ``ctfm search`` returns. Scans picked on the
page are encoded in the background (:meth:`SearchSession.prepare`), one pass at a time, and give way to a
search between passes.

Why a small standard-library server (``http.server.ThreadingHTTPServer``) with a plain page and JSON
endpoints, rather than the authors' Streamlit: it adds no dependency, makes no network call (Streamlit
phones home unless told not to, and pulls in a large stack), works offline with every asset in
``ctfm/resources/search_app``, and any browser, including the headless one of the tests, drives it.
"""

from __future__ import annotations

import io
import itertools
import json
import threading
import time
import traceback
import urllib.parse
from contextlib import contextmanager
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np

# CT windows (level, width) in HU offered by the page
WINDOWS = {"soft tissue": (40, 400), "lung": (-600, 1500), "bone": (400, 1800), "brain": (40, 80)}
AXES = ("axial", "coronal", "sagittal")
STATIC = {"/": "index.html", "/index.html": "index.html", "/app.js": "app.js", "/app.css": "app.css"}
CONTENT_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
                 ".css": "text/css; charset=utf-8"}
KEEP_JOBS = 4  # finished searches whose heatmaps stay in memory
COARSE_FACTOR = (1, 2, 2)  # the coarse match's grid: in-plane voxels merged 2 x 2, a quarter of the encoder's work


class RequestError(ValueError):
    """A request the app cannot serve; its message is shown on the page."""

    def __init__(self, message: str, status: HTTPStatus = HTTPStatus.BAD_REQUEST):
        super().__init__(message)
        self.status = status


def list_scans(scans) -> dict[str, Path]:
    """Scan id -> path for a folder (NIfTI/NRRD files and DICOM series folders in it, at any depth) or a datalist.

    An id is the scan's path relative to the folder (the datalist's folder), without the volume suffix.
    """
    from ctfm.analysis.scans import datalist_entries
    from ctfm.io import absolute, is_volume_file, strip_volume_suffix

    scans = absolute(scans)
    if scans.is_file() and scans.suffix == ".json":
        root, paths = scans.parent, [Path(e["image"]) for e in datalist_entries(scans)]
    elif scans.is_dir():
        files = [p for p in sorted(scans.rglob("*")) if is_volume_file(p)]
        folders = [scans, *sorted(p for p in scans.rglob("*") if p.is_dir())]
        root, paths = scans, files + [d for d in folders if _holds_dicom(d)]
    else:
        raise FileNotFoundError(f"{scans}: no such folder or datalist (.json); pass --scans a folder of scans "
                                "(NIfTI, NRRD, DICOM series folders) or a decathlon-style datalist.")
    if not paths:
        raise ValueError(f"{scans} holds no scans (NIfTI/NRRD files, DICOM series folders or datalist entries).")
    return {strip_volume_suffix(p.relative_to(root).as_posix() if p.is_relative_to(root) else str(p)): p for p in paths}


def _holds_dicom(folder: Path) -> bool:
    """Whether ``folder``'s first plain file is DICOM (series files often have no suffix)."""
    from pydicom.misc import is_dicom

    from ctfm.io import is_volume_file

    first = next((p for p in sorted(folder.iterdir()) if p.is_file() and not is_volume_file(p)), None)
    return first is not None and is_dicom(first)


def snap_to_grid(centre, box, stride, shape) -> np.ndarray:
    """Start voxel of the grid window (every ``stride``, inside ``shape``) nearest the box centred on ``centre``:
    within half a stride, or less than a stride at the far edge of the volume."""
    from ctfm.analysis.search import box_start

    start = box_start(centre, box, shape)
    stride = np.asarray(stride)
    last = np.maximum(np.asarray(shape) - np.asarray(box), 0) // stride * stride
    return np.clip(np.round(start / stride).astype(int) * stride, 0, last)


def coarse_factor(box) -> tuple[int, int, int]:
    """Voxels merged per axis for the coarse match: :data:`COARSE_FACTOR` where the box, shrunk by it, stays a
    multiple of the encoder's 16-voxel cells, else 1 (all ones: the coarse match is the full grid's first pass)."""
    from ctfm.analysis.patch_embeddings import STAGE_STRIDE

    return tuple(f if b % (f * STAGE_STRIDE) == 0 else 1 for b, f in zip(box, COARSE_FACTOR))


def shrink(image, factor):
    """A ``(1, S, P, L)`` volume averaged over blocks of ``factor`` voxels (a partial block at the end padded with air);
    block ``c`` holds voxels ``f c .. f c + f - 1``, centred on ``f c + (f - 1) / 2``."""
    import torch.nn.functional as F

    from ctfm.analysis.patch_embeddings import pad_to

    shape = [-(-n // f) * f for n, f in zip(image.shape[1:], factor)]
    return F.avg_pool3d(pad_to(image, shape)[None], factor)[0]


class EncoderTurns:
    """One encoder job at a time (the encoder uses every core), searches first: a background pass that waits lets
    any waiting search go before it, so a search waits at most for the pass under way."""

    def __init__(self):
        self._free = threading.Condition()
        self._busy = False
        self._searches = 0  # searches waiting

    @contextmanager
    def turn(self, search: bool):
        with self._free:
            self._searches += 1 if search else 0
            self._free.wait_for(lambda: not self._busy and (search or not self._searches))
            self._searches -= 1 if search else 0
            self._busy = True
        try:
            yield
        finally:
            with self._free:
                self._busy = False
                self._free.notify_all()


@dataclass
class Job:
    """One search: its progress while it runs, then each target's match and heatmap."""

    id: str
    source: str
    targets: list
    box: tuple
    state: str = "queued"  # queued, running, done, error
    step: int = 0
    steps: int = 1
    message: str = "waiting for the encoder (a search before it, or scans being encoded in the background)"
    error: str | None = None
    started: float = field(default_factory=time.perf_counter)
    seconds: float | None = None
    query: dict | None = None
    results: list = field(default_factory=list)  # each target's latest match: "coarse", then "final"
    timeline: list = field(default_factory=list)  # every match published: target, stage, seconds since the request
    heat: dict = field(default_factory=dict)  # target id -> (S, P, L) float16 on the CT-FM grid, 0..1

    def public(self) -> dict:
        return {"id": self.id, "state": self.state, "step": self.step, "steps": self.steps, "message": self.message,
                "error": self.error, "elapsed": round(time.perf_counter() - self.started, 1), "seconds": self.seconds,
                "query": self.query, "results": self.results, "timeline": self.timeline}


class SearchSession:
    """The app's state: the scans, their preprocessed volumes and encoder passes (kept in memory), the searches."""

    def __init__(self, scans: dict[str, Path], weights, stride, spacing, device="cpu", precision="bf16"):
        from ctfm.weights import load_pretrained

        self.paths, self.weights = scans, str(weights)
        self.stride, self.spacing = tuple(int(s) for s in stride), tuple(float(s) for s in spacing)
        self.device, self.precision = device, precision
        self.model = load_pretrained(weights).to(device).eval()
        self._scans, self._maps, self._coarse, self.jobs = {}, {}, {}, {}
        self._read_lock = threading.Lock()
        self._encoder = EncoderTurns()
        self._ids = itertools.count(1)
        self._prepared = set()

    # --- scans ---------------------------------------------------------------------------------
    def scan(self, sid: str):
        """The scan ``sid`` as read and preprocessed (read once)."""
        from ctfm.analysis.scans import Scan
        from ctfm.io import root_cause

        self._check_known(sid)
        with self._read_lock:
            if sid not in self._scans:
                try:
                    self._scans[sid] = Scan.read(self.paths[sid], self.spacing)
                except Exception as err:  # any reader failure: the page says which file and why
                    raise RequestError(f"cannot read scan {sid!r} ({self.paths[sid]}): {root_cause(err)}") from None
                self._maps[sid] = {}
            return self._scans[sid]

    def _check_known(self, sid: str) -> None:
        if sid not in self.paths:
            raise RequestError(f"unknown scan {sid!r}; the app serves: {', '.join(self.paths)}", HTTPStatus.NOT_FOUND)

    def scan_info(self, sid: str) -> dict:
        scan = self.scan(sid)
        return {"id": sid, "path": str(self.paths[sid]), "shape": list(scan.image.shape[1:]),
                "spacing": list(self.spacing)}

    def slice_png(self, sid: str, axis: str, index: int, window: str, job: str | None = None) -> bytes:
        """One slice of the CT-FM grid as PNG in a CT window, with the heatmap of search ``job`` blended over it."""
        from PIL import Image

        from ctfm.registry import HU_MAX, HU_MIN

        if axis not in AXES or window not in WINDOWS:
            raise RequestError(f"axis must be one of {AXES} and window one of {list(WINDOWS)}")
        volume = self.scan(sid).image[0].numpy()
        hu = _plane(volume, axis, index) * (HU_MAX - HU_MIN) + HU_MIN
        level, width = WINDOWS[window]
        gray = np.clip((hu - (level - width / 2)) / width, 0, 1)
        rgb = np.repeat(gray[..., None], 3, axis=2)
        if job:
            heat = self.job(job).heat.get(sid)
            if heat is None:
                raise RequestError(f"search {job} has no heatmap for {sid!r}", HTTPStatus.NOT_FOUND)
            h = _plane(heat, axis, index).astype(np.float32)
            rgb = (1 - 0.45) * rgb + 0.45 * _colormap(h)
        buffer = io.BytesIO()
        Image.fromarray((rgb * 255).astype(np.uint8)).save(buffer, format="PNG", compress_level=1)
        return buffer.getvalue()

    # --- searches ------------------------------------------------------------------------------
    def start_search(self, source: str, point, targets, box) -> Job:
        """Check a search request and start it in the background; the page polls :meth:`job`."""
        from ctfm.analysis.patch_embeddings import check_fast_grid

        if not targets:
            raise RequestError("choose at least one target scan")
        for sid in [source, *targets]:
            self._check_known(sid)
        try:
            box = tuple(int(b) for b in box)
            point = np.asarray(point, dtype=float).reshape(3)
            check_fast_grid(box, self.stride)
        except (TypeError, ValueError) as err:
            raise RequestError(f"bad box {box!r} or point {point!r}: {err}") from None
        shape = np.array(self.scan(source).image.shape[1:])
        if np.any(point < 0) or np.any(point > shape - 1):
            raise RequestError(f"the point {point.tolist()} (voxel S, P, L of the CT-FM grid) lies outside {source}, "
                               f"whose grid is {shape.tolist()} voxels; click inside the image.")
        job = Job(id=str(next(self._ids)), source=source, targets=list(targets), box=box, steps=1 + len(targets))
        self.jobs[job.id] = job
        for old in list(self.jobs)[:-KEEP_JOBS]:
            self.jobs.pop(old)
        threading.Thread(target=self._run, args=(job, point), daemon=True).start()
        return job

    def job(self, jid: str) -> Job:
        if jid not in self.jobs:
            raise RequestError(f"no search {jid!r} (only the last {KEEP_JOBS} are kept); run it again",
                               HTTPStatus.NOT_FOUND)
        return self.jobs[jid]

    def _run(self, job: Job, point: np.ndarray) -> None:
        from ctfm.io import root_cause

        with self._encoder.turn(search=True):
            job.state = "running"  # its time counts from the request: the wait for the encoder is felt too
            try:
                self._search(job, point)
                job.state, job.message = "done", "done"
            except Exception as err:  # the page shows it; the server stays up
                job.state, job.error = "error", str(root_cause(err))
                if not isinstance(err, RequestError):
                    traceback.print_exc()
            job.seconds = round(time.perf_counter() - job.started, 2)
        # the next click may fall on another of the source's passes (stride < 16 along an axis): encode the rest of
        # them in the background, so that query, too, only pools
        if job.state == "done":
            self.prepare(job.source)

    def prepare(self, sid: str) -> None:
        """Run a scan's encoder passes in the background (the page asks when a scan is picked), so the first search
        on it only pools. Any window size shares them; a read error is reported by the search that needs the scan.
        One pass at a time, after any waiting search: a search waits for at most the pass under way."""
        from ctfm.analysis.patch_embeddings import (STAGE_STRIDE, covering_shape, pad_to, pass_offsets,
                                                    shifted_feature_map)

        self._check_known(sid)
        if sid in self._prepared:
            return
        self._prepared.add(sid)

        def encode():
            try:
                image = self.scan(sid).image  # read outside the encoder's lock: a search may run meanwhile
                # padded as for windows of 16 voxels (pooled_window_embeddings): the encoder's input for any box
                image = pad_to(image, covering_shape(image.shape[1:], [STAGE_STRIDE] * 3, self.stride))
                for n, offset in enumerate(pass_offsets(self.stride), start=1):
                    with self._encoder.turn(search=False):
                        print(f"[prepare] encoder pass {n} over {sid}", flush=True)
                        shifted_feature_map(self.model, image, offset, device=self.device, precision=self.precision,
                                            maps=self._maps[sid])
            except Exception as err:  # the search on this scan raises it again, on the page
                print(f"[prepare] {sid}: {err}", flush=True)

        threading.Thread(target=encode, daemon=True).start()

    def encoded(self) -> dict[str, tuple[int, int]]:
        """Per scan read so far: encoder passes done and passes its window grid needs (the page shows them)."""
        from ctfm.analysis.patch_embeddings import encoder_maps_done, pass_offsets

        needed = len(pass_offsets(self.stride))
        # a query's pass is one of the grid's (the box is snapped to it), so the passes kept are the grid's
        return {sid: (min(encoder_maps_done(maps), needed), needed) for sid, maps in list(self._maps.items())}

    def _passes_needed(self, sid: str) -> bool:
        done, needed = self.encoded().get(sid, (0, 1))
        return done < needed

    def _coarse_scan(self, sid: str, factor) -> tuple:
        """The scan ``sid`` shrunk by ``factor`` and the cache of its encoder passes (the full grid's own when the
        factor is all ones, so the coarse match's pass serves the final one)."""
        if not any(f > 1 for f in factor):
            return self.scan(sid).image, self._maps[sid]
        if (sid, factor) not in self._coarse:
            self._coarse[(sid, factor)] = (shrink(self.scan(sid).image, factor), {})
        return self._coarse[(sid, factor)]

    def _search(self, job: Job, point: np.ndarray) -> None:
        from ctfm.analysis.search import query_embedding, search_image

        def step(message):
            job.message = message
            print(f"[search {job.id}] {message}", flush=True)

        src = self.scan(job.source)
        start = snap_to_grid(point, job.box, self.stride, src.image.shape[1:])
        centre = start + (np.asarray(job.box) - 1) / 2.0
        cold = [tid for tid in job.targets if self._passes_needed(tid)]
        if cold and self._coarse_differs(job.box):
            job.steps += len(cold)
            self._coarse_matches(job, centre, cold, step)
        step(f"embedding the query box in {job.source} (an encoder pass over it, unless its passes are done)")
        query = query_embedding(self.model, src.image, centre, job.box, "pooled", device=self.device,
                                precision=self.precision, maps=self._maps[job.source])
        job.query = {"source": job.source, "centre_grid": centre.tolist(), "start_grid": start.tolist(),
                     "box": list(job.box), **_coordinates(src, centre)}
        for n, tid in enumerate(job.targets, start=1):
            job.step += 1
            passes = "the encoder passes over it" if self._passes_needed(tid) else "pooling its cached passes"
            step(f"target {n}/{len(job.targets)} {tid}: {passes}, for the final match")
            match = search_image(self.model, query, self.scan(tid).image, job.box, self.stride, "pooled",
                                 device=self.device, progress=False, precision=self.precision, maps=self._maps[tid])
            self._publish(job, tid, match, "final")
        job.step = job.steps

    def _coarse_differs(self, box) -> bool:
        """Whether the coarse match is cheaper than the final one: a smaller grid, or fewer passes (stride < 16)."""
        from ctfm.analysis.patch_embeddings import STAGE_STRIDE

        return any(f > 1 for f in coarse_factor(box)) or any(s < STAGE_STRIDE for s in self.stride)

    def _coarse_matches(self, job: Job, centre, targets, step) -> None:
        """The search itself on the coarse grid (:func:`coarse_factor`), windows every 16 cells or more: one pass."""
        from ctfm.analysis.patch_embeddings import STAGE_STRIDE
        from ctfm.analysis.search import query_embedding, search_image

        factor = coarse_factor(job.box)
        box = tuple(b // f for b, f in zip(job.box, factor))
        stride = tuple(max(s, STAGE_STRIDE) for s in self.stride)
        options = {"device": self.device, "precision": self.precision}
        step(f"coarse match: embedding the query box in {job.source}")
        image, maps = self._coarse_scan(job.source, factor)
        query = query_embedding(self.model, image, (centre - (np.array(factor) - 1) / 2) / factor, box, "pooled",
                                maps=maps, **options)
        for n, tid in enumerate(targets, start=1):
            job.step += 1
            merged = f", voxels merged {' x '.join(map(str, factor))}" if any(f > 1 for f in factor) else ""
            step(f"coarse match {n}/{len(targets)}: one encoder pass over {tid}{merged}")
            image, maps = self._coarse_scan(tid, factor)
            match = search_image(self.model, query, image, box, stride, "pooled", progress=False, maps=maps, **options)
            self._publish(job, tid, match, "coarse", factor)

    def _publish(self, job: Job, tid: str, match, stage: str, factor=(1, 1, 1)) -> None:
        """Put a target's match (found on a grid shrunk by ``factor``) and its heatmap on the target's grid
        (min-max normalised, as the authors' app shows it) into the job."""
        from ctfm.analysis.patch_embeddings import windows_to_voxels

        tgt = self.scan(tid)
        shape = tgt.image.shape[1:]
        grid = [-(-n // f) for n, f in zip(shape, factor)]
        heat = windows_to_voxels(match.similarity, match.starts, match.window, grid)[0]
        for axis, f in enumerate(factor):
            heat = np.repeat(heat, f, axis=axis)
        heat = heat[: shape[0], : shape[1], : shape[2]]
        low, high = float(heat.min()), float(heat.max())
        job.heat[tid] = ((heat - low) / max(high - low, 1e-12)).astype(np.float16)
        best = match.best_centre * factor + (np.array(factor) - 1) / 2
        seconds = round(time.perf_counter() - job.started, 2)
        result = {"target": tid, "stage": stage, "seconds": seconds, "box": list(job.box),
                  "similarity": round(float(match.similarity[match.best]), 6), "centre_grid": best.tolist(),
                  **_coordinates(tgt, best)}
        job.results = [r for r in job.results if r["target"] != tid] + [result]
        job.timeline.append({"target": tid, "stage": stage, "seconds": seconds})


def _coordinates(scan, centre) -> dict:
    from ctfm.analysis.scans import world_to_voxel

    world = scan.grid_to_world(centre)
    voxel = world_to_voxel(scan.raw.affine, world)
    return {"world_mm": np.round(world, 2).tolist(), "file_voxel": np.round(voxel, 2).tolist()}


def _plane(volume: np.ndarray, axis: str, index: int) -> np.ndarray:
    """A 2-D view of an (S, P, L) volume as a radiologist reads it: superior up, anterior up (axial), patient's right
    on the left."""
    n = volume.shape[AXES.index(axis)]
    if not 0 <= index < n:
        raise RequestError(f"slice {index} is outside 0..{n - 1} along {axis}")
    if axis == "axial":
        return volume[index]
    return (volume[:, index, :] if axis == "coronal" else volume[:, :, index])[::-1]


def _colormap(values: np.ndarray) -> np.ndarray:
    """RGB in 0..1 of values in 0..1 (matplotlib's "jet", as the authors' app shows similarity)."""
    from matplotlib import colormaps

    return colormaps["jet"](np.clip(np.nan_to_num(values), 0, 1))[..., :3]


# --- HTTP ----------------------------------------------------------------------------------------


def make_handler(session: SearchSession):
    from ctfm.analysis.search import DEFAULT_BOX
    from ctfm.registry import resource

    class Handler(BaseHTTPRequestHandler):
        server_version = "ctfm-search-app"

        def log_message(self, format, *args):  # quiet: progress is printed by the searches
            pass

        def _send(self, status, body: bytes, content_type: str):
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            self.wfile.write(body)

        def _json(self, obj, status=HTTPStatus.OK):
            self._send(status, json.dumps(obj).encode(), "application/json")

        def _serve(self, action):
            try:
                action()
            except RequestError as err:
                self._json({"error": str(err)}, err.status)
            except Exception as err:  # a bug must not take the server down; the page shows it
                traceback.print_exc()
                self._json({"error": f"{type(err).__name__}: {err}"}, HTTPStatus.INTERNAL_SERVER_ERROR)

        def do_GET(self):
            url = urllib.parse.urlparse(self.path)
            q = {k: v[-1] for k, v in urllib.parse.parse_qs(url.query).items()}
            if url.path in STATIC:
                name = STATIC[url.path]
                body = resource(f"search_app/{name}").read_bytes()
                return self._send(HTTPStatus.OK, body, CONTENT_TYPES[Path(name).suffix])
            routes = {
                "/api/config": lambda: self._json({"scans": list(session.paths), "windows": list(WINDOWS),
                                                   "axes": list(AXES), "stride": list(session.stride),
                                                   "box": list(DEFAULT_BOX),
                                                   "precision": session.precision, "weights": session.weights}),
                "/api/scan": lambda: self._json(session.scan_info(q.get("id", ""))),
                "/api/job": lambda: self._json(session.job(q.get("id", "")).public()),
                "/api/encoded": lambda: self._json(session.encoded()),
                "/api/slice": lambda: self._send(HTTPStatus.OK, session.slice_png(
                    q.get("scan", ""), q.get("axis", "axial"), _int(q.get("index", "0")),
                    q.get("window", "soft tissue"), q.get("job") or None), "image/png"),
            }
            if url.path not in routes:
                return self._json({"error": f"no page {url.path}"}, HTTPStatus.NOT_FOUND)
            self._serve(routes[url.path])

        def do_POST(self):
            path = urllib.parse.urlparse(self.path).path
            if path not in ("/api/search", "/api/prepare"):
                return self._json({"error": f"no endpoint {self.path}"}, HTTPStatus.NOT_FOUND)

            def post():
                try:
                    body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
                    if path == "/api/prepare":
                        session.prepare(body["scan"])
                        return self._json({"scan": body["scan"]}, HTTPStatus.ACCEPTED)
                    args = (body["source"], body["point"], body["targets"], body["box"])
                except (ValueError, KeyError, TypeError) as err:
                    fields = "scan" if path == "/api/prepare" else "source, point, targets and box"
                    raise RequestError(f"{path} needs JSON with {fields} ({err})") from None
                self._json(session.start_search(*args).public(), HTTPStatus.ACCEPTED)

            self._serve(post)

    return Handler


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise RequestError(f"{text!r} is not a slice number") from None


def serve_search_app(scans, weights, port: int = 8501, host: str = "127.0.0.1", stride=None, spacing=None,
                     device: str = "cpu", precision: str = "bf16") -> None:
    """Serve the app on ``host:port`` (0: a free port) until interrupted (Ctrl-C)."""
    from ctfm.analysis.search import DEFAULT_STRIDE
    from ctfm.registry import EMBEDDING_SPACING

    session = SearchSession(list_scans(scans), weights, stride or DEFAULT_STRIDE, spacing or EMBEDDING_SPACING,
                            device=device, precision=precision)
    server = ThreadingHTTPServer((host, int(port)), make_handler(session))
    server.daemon_threads = True
    url = f"http://{host}:{server.server_address[1]}/"
    print(f"ctfm search app: {len(session.paths)} scans, weights {weights}, precision {precision}; open {url} "
          "(Ctrl-C stops it)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
