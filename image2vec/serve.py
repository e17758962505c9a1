"""``image2vec serve``: a local web page for a model (summaries, image search, similar words).

The page (``resources/serve.html``, ``serve.js``, ``serve.css``: no CDN, it works offline) talks to
a small JSON API of a Starlette application, served by uvicorn (``pip install image2vec[web]``):

====================================  =================================================================
``GET /api/model``                    what the model is: system, vocabulary size, training data, date
``POST /api/summarize?k=3``           the body is an image file: its k words, their coefficients, the
                                      next best words
``GET /api/summary?name=N&k=3``       the same for image N of ``--images DIR`` (its cached features)
``GET /api/similar?word=W&n=10``      the words most similar to W
``GET /api/search?q=dog+beach&n=12``  the folder's images ranked for the word sum
``GET /api/folder``                   the folder's state: extracting (with progress), ready or failed
``GET /images/N``                     image N of the folder, and nothing else
====================================  =================================================================

The server keeps the model, the feature extractor and the folder's features in memory. The
folder's features come from the same cache as ``image2vec retrieve``, extracted by a background
thread on first use, so the page answers (and shows the progress) meanwhile. Uploads are limited
to :data:`MAX_UPLOAD_BYTES` and decoded by :func:`image2vec.features.decode_image`, the bounded
loader of the command line; a bad one is a message on the page (status 400 or 413), never a
failure of the server. Only the folder's own image files are served: a name that is not one of
them, or a symbolic link that leads out of the folder, is refused.
"""

from __future__ import annotations

import io
import ipaddress
import logging
import socket
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

# The command line's model loading, checks, folder cache and word look-up (with its suggestions)
from image2vec.cli import (
    IMAGE_SUFFIXES,
    _checked_inputs,
    _file_fingerprint,
    _folder_cache,
    _load_model,
    _vocabulary_word,
)
from image2vec.errors import Image2VecError
from image2vec.names import extractor_of

logger = logging.getLogger(__name__)

#: The largest upload accepted (bytes).
MAX_UPLOAD_BYTES = 20 * 2**20
#: How many next best words a summary lists after its k words.
N_NEXT = 5
#: The page's files, in ``image2vec/resources``, and their media types.
RESOURCES = Path(__file__).resolve().parent / "resources"
ASSETS = {"serve.html": "text/html; charset=utf-8", "serve.js": "text/javascript; charset=utf-8",
          "serve.css": "text/css; charset=utf-8"}


class Folder:
    """The images of ``--images DIR`` and their features, extracted by a background thread.

    Parameters
    ----------
    root : Path
        The folder.
    files : list of Path
        Its image files (inside it, symbolic links leading out of it already left out).
    store : Path
        The feature store that caches their features.
    keys : list
        The files' keys in the store (their fingerprints).
    """

    def __init__(self, root: Path, files: list[Path], store: Path, keys: list):
        self.root, self.files, self.store, self.keys = root.resolve(), files, store, keys
        self.by_name = {f.name: f for f in files}
        self.state, self.error = "extracting", ""
        self.features: np.ndarray | None = None
        self.names: list[str] = []  # the images whose features were extracted, in their rows' order
        self.rows: dict[str, int] = {}

    def start(self, service: Service) -> threading.Thread:
        """Extract (or read from the cache) the features in a daemon thread; returns it."""
        thread = threading.Thread(target=self._extract, args=(service,), name="image2vec-folder",
                                  daemon=True)
        thread.start()
        return thread

    def _extract(self, service: Service) -> None:
        from image2vec.features import extract_features

        try:
            feature_set = extract_features(self.files, self.store, keys=self.keys,
                                           extractor=service.extractor, on_bad_image="skip",
                                           progress=False)
            self.features = service.checked(np.array(feature_set.features), "the folder's features")
            self.names = [Path(f).name for f in feature_set.files]
            self.rows = {name: row for row, name in enumerate(self.names)}
            self.state = "ready"
        except Exception as exc:  # shown on the page; the rest of it keeps working
            self.error, self.state = str(exc) or type(exc).__name__, "failed"
            logger.error("the features of %s could not be extracted: %s", self.root, self.error)

    def status(self) -> dict:
        """{"state": extracting | ready | failed, "done", "total", "error"}."""
        from image2vec.store import extraction_progress

        done = (len(self.files) if self.state == "ready"
                else extraction_progress(self.store, len(self.files)))
        return {"folder": str(self.root), "state": self.state, "done": done,
                "total": len(self.files), "error": self.error}

    def path_of(self, name: str) -> Path:
        """The file of image ``name``; an Image2VecError unless it is one of the folder's images
        and still inside the folder (a symbolic link changed to lead out of it is refused)."""
        path = self.by_name.get(name)
        if path is None or not path.resolve().is_relative_to(self.root):
            raise Image2VecError(f"no image {name!r} in the folder")
        return path


def folder_files(root: Path, suffixes: tuple[str, ...]) -> list[Path]:
    """The image files of ``root`` (by suffix), sorted, without symbolic links leading out of it."""
    inside = root.resolve()
    files = []
    for path in sorted(root.iterdir()):
        if path.suffix.lower() not in suffixes:
            continue
        if not path.resolve().is_relative_to(inside):
            logger.warning("leaving out %s: a symbolic link to outside the folder", path.name)
            continue
        files.append(path)
    return files


@dataclass
class Service:
    """What the page asks, answered with the model and the extractor kept in memory.

    Every method returns a JSON-ready dict or raises Image2VecError (a message for the page).
    The model and the network compute under one lock: concurrent requests are answered in turn.
    """

    system: Any
    metadata: dict
    extractor: Any
    folder: Folder | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)

    def checked(self, features: np.ndarray, source: str) -> np.ndarray:
        """``features`` when the model can read them (the command line's check)."""
        return _checked_inputs(features, self.system, [source] * len(features), source)

    def info(self) -> dict:
        """The model: its system, vocabulary size, training data and date, from its metadata."""
        from image2vec.systems import system_name

        meta = self.metadata
        return {"system": system_name(self.system), "n_words": len(self.system.words_),
                "dim": int(self.system.dictionary_.shape[0]),
                "source": meta.get("data") or meta.get("source"),  # the data named, else its file
                "n_images": meta.get("n_images"), "trained": meta.get("date"),
                "extractor": extractor_of(meta),
                "folder": self.folder.status() if self.folder else None}

    def warm_up(self) -> None:
        """Summarize a grey image once, so that the first request is answered at full speed."""
        from PIL import Image

        batch = self.extractor.preprocessing(Image.new("RGB", (256, 256), (128, 128, 128)))[None]
        with self.lock:
            features, _ = self.extractor(batch)
        self._summary(features, 3)

    def summarize_upload(self, data: bytes, name: str, k: int) -> dict:
        """The summary of an uploaded image file."""
        from image2vec.features import decode_image

        image = decode_image(io.BytesIO(data), name)  # outside the lock: decoding is per request
        batch = self.extractor.preprocessing(image)[None]
        with self.lock:
            features, _ = self.extractor(batch)
        return self._summary(self.checked(features, f"the features of {name}"), k)

    def summarize_folder_image(self, name: str, k: int) -> dict:
        """The summary of image ``name`` of the folder, from its cached features."""
        folder = self._ready_folder()
        if name not in folder.rows:
            raise Image2VecError(f"no image {name!r} in the folder")
        return {"name": name, **self._summary(folder.features[[folder.rows[name]]], k)}

    def _summary(self, features: np.ndarray, k: int) -> dict:
        with self.lock:
            summary = self.system.summarize(features, k)
            scores = self.system.decision_function(features)[0]
        n = len(summary.words[0])
        chosen = set(summary.indices[0, :n].tolist())
        ranked = [int(v) for v in np.argsort(-scores, kind="stable")[: n + N_NEXT] if int(v) not in chosen]
        return {"words": summary.words[0], "scores": [float(s) for s in summary.scores[0, :n]],
                "next": [{"word": str(self.system.words_[v]), "score": float(scores[v])}
                         for v in ranked[:N_NEXT]]}

    def similar(self, word: str, n: int) -> dict:
        """The ``n`` words most similar to ``word`` (looked up as the command line does)."""
        word = _vocabulary_word(self.system, word)
        with self.lock:
            neighbours = self.system.similar(word, n)
        return {"word": word, "similar": [{"word": w, "score": float(s)} for w, s in neighbours]}

    def search(self, query: str, n: int) -> dict:
        """The folder's ``n`` best images for the sum of the words of ``query``."""
        words = [_vocabulary_word(self.system, w) for w in query.replace(",", " ").replace("+", " ").split()]
        if not words:
            raise Image2VecError("type one or more words of the model's vocabulary")
        folder = self._ready_folder()
        with self.lock:
            order, scores = self.system.retrieve(words, folder.features, n)
        return {"words": words, "metric": self.system.metric,
                "results": [{"name": folder.names[i], "score": float(s)} for i, s in zip(order, scores)]}

    def _ready_folder(self) -> Folder:
        if self.folder is None:
            raise Image2VecError("no image folder: start the server with --images DIR to search one")
        if self.folder.state == "failed":
            raise Image2VecError(f"the folder's features could not be extracted: {self.folder.error}")
        if self.folder.state != "ready":
            status = self.folder.status()
            raise Image2VecError(f"the folder's features are being extracted ({status['done']} of "
                                 f"{status['total']} images): try again in a moment")
        return self.folder


def build_service(model: str | None, images: str | None = None, features: str | None = None,
                  device: str = "cpu") -> Service:
    """The service of ``image2vec serve``: the model, its extractor (warmed up) and the folder.

    Parameters
    ----------
    model : str or None
        Model file; None: the pretrained model (:func:`image2vec.load_pretrained`).
    images : str, optional
        Folder of images to search; its features are not extracted yet (``folder.start``).
    features : str, optional
        Feature store caching the folder's features (default: ``image2vec retrieve``'s cache).
    device : {"cpu", "cuda"}

    Raises
    ------
    Image2VecError
        A bad model file, a baseline (no word vectors), a folder that is missing or has no image.
    """
    from image2vec.features import load_extractor

    system, metadata = _load_model(model, device)  # None: the pretrained model
    if not hasattr(system, "retrieve"):
        raise Image2VecError("the model is a baseline: serve needs an Image2Vec model")
    folder = None
    if images:
        root = Path(images)
        if not root.is_dir():
            raise Image2VecError(f"image folder {root} does not exist or is not a folder")
        files = folder_files(root, IMAGE_SUFFIXES)
        if not files:
            raise Image2VecError(f"no image files ({', '.join(IMAGE_SUFFIXES)}) in {root}")
        store = Path(features) if features else _folder_cache(root, metadata)
        folder = Folder(root, files, store, [_file_fingerprint(f) for f in files])
    extractor = load_extractor(extractor_of(metadata), device)
    service = Service(system, metadata, extractor, folder)
    service.warm_up()
    return service


def create_app(service: Service):
    """The Starlette application of the page and its JSON API."""
    from starlette.applications import Starlette
    from starlette.concurrency import run_in_threadpool
    from starlette.requests import Request
    from starlette.responses import FileResponse, JSONResponse, Response
    from starlette.routing import Route

    def error(message: str, status: int = 400) -> JSONResponse:
        return JSONResponse({"error": message}, status_code=status)

    def count(request: Request, name: str, default: int, most: int) -> int:
        text = request.query_params.get(name, str(default))
        if not text.isdigit() or not 1 <= int(text) <= most:
            raise Image2VecError(f"{name} must be an integer from 1 to {most}, not {text!r}")
        return int(text)

    async def answer(work, *args) -> JSONResponse:
        try:
            return JSONResponse(await run_in_threadpool(work, *args))
        except Image2VecError as exc:
            return error(str(exc))

    async def asset(request: Request) -> Response:
        name = request.path_params.get("name", "serve.html")
        if name not in ASSETS:
            return error(f"no page file {name!r}", 404)
        return Response((RESOURCES / name).read_bytes(),
                        media_type=ASSETS[name])

    async def model(request: Request) -> JSONResponse:
        return JSONResponse(service.info())

    async def folder(request: Request) -> JSONResponse:
        return JSONResponse(service.folder.status() if service.folder else {"state": "none"})

    async def summarize(request: Request) -> JSONResponse:
        try:
            k = count(request, "k", 3, 50)
        except Image2VecError as exc:
            return error(str(exc))
        declared = request.headers.get("content-length", "0")
        if declared.isdigit() and int(declared) > MAX_UPLOAD_BYTES:
            return error(f"the file is over the upload limit of {MAX_UPLOAD_BYTES // 2**20} MiB", 413)
        data = bytearray()
        async for chunk in request.stream():  # counted as it comes: a lying header changes nothing
            data += chunk
            if len(data) > MAX_UPLOAD_BYTES:
                return error(f"the file is over the upload limit of {MAX_UPLOAD_BYTES // 2**20} MiB", 413)
        if not data:
            return error("no image: choose or drop an image file")
        name = request.query_params.get("name", "upload")[:200]
        return await answer(service.summarize_upload, bytes(data), name, k)

    async def text_query(request: Request, work, text: str, size: str, default: int, most: int):
        """``work(the text parameter, the size parameter)``, answered as JSON."""
        try:
            n = count(request, size, default, most)
        except Image2VecError as exc:
            return error(str(exc))
        return await answer(work, request.query_params.get(text, ""), n)

    async def summary(request: Request) -> JSONResponse:
        return await text_query(request, service.summarize_folder_image, "name", "k", 3, 50)

    async def similar(request: Request) -> JSONResponse:
        return await text_query(request, service.similar, "word", "n", 10, 100)

    async def search(request: Request) -> JSONResponse:
        return await text_query(request, service.search, "q", "n", 12, 200)

    async def image(request: Request) -> Response:
        if service.folder is None:
            return error("no image folder", 404)
        try:
            path = service.folder.path_of(request.path_params["name"])
        except Image2VecError as exc:
            return error(str(exc), 404)
        return FileResponse(path)

    return Starlette(routes=[
        Route("/", asset), Route("/{name:str}", asset),
        Route("/api/model", model), Route("/api/folder", folder),
        Route("/api/summarize", summarize, methods=["POST"]), Route("/api/summary", summary),
        Route("/api/similar", similar), Route("/api/search", search),
        Route("/images/{name:str}", image),
    ])


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on ``host``:``port`` (port 0: a free one); OSError when it cannot be had."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        address = socket.getaddrinfo(host, port, family, socket.SOCK_STREAM)[0][4]
    except socket.gaierror as exc:
        raise Image2VecError(f"cannot serve on host {host!r}: {exc.strerror}") from None
    sock = socket.create_server(address[:2], family=family)
    sock.set_inheritable(True)
    return sock


def is_loopback(sock: socket.socket) -> bool:
    """Whether ``sock`` listens on a loopback address only (127.0.0.0/8, ::1)."""
    return ipaddress.ip_address(sock.getsockname()[0]).is_loopback


def serve(service: Service, sock: socket.socket) -> None:
    """Answer the page on ``sock`` until Ctrl-C or SIGTERM (uvicorn then shuts down cleanly)."""
    import uvicorn

    config = uvicorn.Config(create_app(service), log_level="warning", access_log=False)
    uvicorn.Server(config).run(sockets=[sock])
