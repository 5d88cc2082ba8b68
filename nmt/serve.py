"""``python -m nmt.serve ckpt=PATH [host=127.0.0.1 port=8000 ...]``: an HTTP JSON translation API.

The model is loaded once and kept. Endpoints:

- ``POST /translate`` ``{"text": ["line", ...], "beam_size": 5, "nbest": 3}`` (both options
  optional; the defaults are ``decode.*``) -> ``{"translations": [...]}``, plus
  ``"nbest": [[{"text": ..., "score": ...}, ...], ...]`` when the request names ``nbest``.
  Answers equal offline translation (``nmt-translate``, ``Translator``) of the same lines.
- ``GET /health`` -> ``{"status": "ok", "pending": lines accepted and not yet answered}``.
- ``GET /info`` -> languages, model config, vocabulary sizes, checkpoint, decode defaults, limits.

Server stack: aiohttp (asyncio HTTP server and client in one well-kept library; the batcher's
futures live on its event loop, and its runner gives a graceful shutdown: stop listening, close
idle connections, wait for the handlers in progress).

Dynamic batching: a handler encodes its lines and queues them as one job; one decoding thread
takes the oldest job, waits up to ``batch_wait_ms`` (from that job's arrival) for more jobs with
the same decode options until their source tokens reach ``decode.max_tokens``, and decodes them
together with ``translate_ids`` (which sorts them into token-budget batches; a sentence's
translation never depends on its batch). ``batching=false`` decodes one job at a time.

Limits: more than ``max_lines`` lines or ``max_chars`` characters in one request (or a body
larger than those allow) -> 413; ``max_queue`` lines accepted and unanswered -> 503 with
``Retry-After``; a malformed request -> 400 with a message. Every error is ``{"error": "..."}``;
an unexpected failure is logged here and answered 500 without a traceback, and the decoding
thread goes on. SIGTERM or SIGINT: stop accepting, answer every accepted request, exit 0.
"""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import threading
import time
from collections import deque
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import hydra
from aiohttp import web
from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig

from nmt.cli import fail, log_to_stderr, to_config, user_errors
from nmt.config import DecodeConfig, ServeConfig

ConfigStore.instance().store(name="serve_schema", node=ServeConfig)
log = logging.getLogger("nmt.serve")


class BadRequest(Exception):
    """A request the server refuses; ``status`` is the HTTP status (400, 413, 503)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class Job:
    """One request's non-empty lines, encoded, waiting for the decoding thread."""

    ids: list[list[int]]
    decode: DecodeConfig
    future: asyncio.Future[list[Any]]
    loop: asyncio.AbstractEventLoop
    arrival: float = field(default_factory=time.monotonic)

    @property
    def tokens(self) -> int:
        return sum(len(row) + 1 for row in self.ids)


class Batcher:
    """The decoding thread and its queue (see the module docstring)."""

    def __init__(self, model: Any, tokenizer: Any, device: Any, cfg: ServeConfig) -> None:
        self.model, self.tokenizer, self.device, self.cfg = model, tokenizer, device, cfg
        self.jobs: deque[Job] = deque()
        self.cond = threading.Condition()
        self.closing = False
        self.batches = 0  # decoded batches (for /health)
        self.thread = threading.Thread(target=self._run, name="nmt-decode", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        """Decode what is queued, then end the thread."""
        with self.cond:
            self.closing = True
            self.cond.notify_all()
        self.thread.join()

    def submit(self, job: Job) -> None:
        with self.cond:
            self.jobs.append(job)
            self.cond.notify_all()

    def _take(self) -> list[Job] | None:
        """The next batch of jobs (None when closing and empty)."""
        budget = self.cfg.decode.max_tokens
        wait = self.cfg.batch_wait_ms / 1000 if self.cfg.batching else 0.0
        with self.cond:
            while not self.jobs:
                if self.closing:
                    return None
                self.cond.wait()
            first = self.jobs[0]
            while not self.closing:
                same = [j for j in self.jobs if j.decode == first.decode]
                left = first.arrival + wait - time.monotonic()
                if left <= 0 or sum(j.tokens for j in same) >= budget:
                    break
                self.cond.wait(left)
            taken = [self.jobs.popleft()]
            if self.cfg.batching:
                tokens = taken[0].tokens
                for job in list(self.jobs):
                    if job.decode == first.decode and tokens + job.tokens <= budget:
                        self.jobs.remove(job)
                        taken.append(job)
                        tokens += job.tokens
            return taken

    def _run(self) -> None:
        while (jobs := self._take()) is not None:
            try:
                results = self._decode(jobs)
            except Exception as e:  # answered 500; the thread goes on
                log.exception("decoding failed")
                for job in jobs:
                    _deliver(job, e)
                continue
            for job, result in zip(jobs, results, strict=True):
                _deliver(job, result)

    def _decode(self, jobs: list[Job]) -> list[list[Any]]:
        from nmt.translation import translate_ids

        ids = [row for job in jobs for row in job.ids]
        tok = self.tokenizer
        hyps = translate_ids(
            self.model, ids, jobs[0].decode, self.device, tok.pad_id, tok.bos_id, tok.eos_id
        )
        self.batches += 1
        out: list[list[Any]] = []
        start = 0
        for job in jobs:
            part = hyps[start : start + len(job.ids)]
            start += len(job.ids)
            out.append(
                [
                    list(
                        zip(
                            tok.decode_tgt([h.tokens for h in hs]),
                            [h.score for h in hs],
                            strict=True,
                        )
                    )
                    for hs in part
                ]
            )
        return out


def _deliver(job: Job, result: Any) -> None:
    def settle() -> None:
        if job.future.done():
            return
        if isinstance(result, BaseException):
            job.future.set_exception(result)
        else:
            job.future.set_result(result)

    job.loop.call_soon_threadsafe(settle)


# ------------------------------------------------------------------------------ request checks


def parse_request(body: bytes, cfg: ServeConfig) -> tuple[list[str], DecodeConfig, bool]:
    """The lines, decode options and whether n-best lists were asked for; BadRequest if not."""
    if not body:
        raise BadRequest(400, 'empty body: send a JSON object like {"text": ["..."]}')
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as e:
        raise BadRequest(400, f"body is not valid UTF-8 (byte {e.start + 1})") from None
    try:
        req = json.loads(text)
    except json.JSONDecodeError as e:
        msg = f"body is not JSON: {e.msg} at line {e.lineno} column {e.colno}"
        raise BadRequest(400, msg) from None
    if not isinstance(req, dict):
        raise BadRequest(400, f"body must be a JSON object, not {type(req).__name__}")
    unknown = sorted(set(req) - {"text", "beam_size", "nbest"})
    if unknown:
        raise BadRequest(400, f"unknown key {unknown[0]!r} (keys: text, beam_size, nbest)")
    if "text" not in req:
        raise BadRequest(400, "missing key 'text' (a list of lines)")
    lines = req["text"]
    if not isinstance(lines, list) or not all(isinstance(x, str) for x in lines):
        raise BadRequest(400, "'text' must be a list of strings")
    if not lines:
        raise BadRequest(400, "'text' is an empty list")
    if any("\n" in line or "\r" in line for line in lines):
        raise BadRequest(400, "'text': a line must not contain a line break")
    if len(lines) > cfg.max_lines:
        raise BadRequest(413, f"{len(lines)} lines in one request (at most {cfg.max_lines})")
    chars = sum(len(line) for line in lines)
    if chars > cfg.max_chars:
        raise BadRequest(413, f"{chars} characters in one request (at most {cfg.max_chars})")
    options = {}
    for key in ("beam_size", "nbest"):
        if key in req:
            value = req[key]
            if not isinstance(value, int) or isinstance(value, bool):
                raise BadRequest(400, f"'{key}' must be an integer")
            options[key] = value
    beam = options.get("beam_size", cfg.decode.beam_size)
    if not 1 <= beam <= cfg.max_beam_size:
        raise BadRequest(400, f"'beam_size' must be between 1 and {cfg.max_beam_size}")
    nbest = options.get("nbest", 1)
    if not 1 <= nbest <= beam:
        raise BadRequest(400, f"'nbest' must be between 1 and beam_size={beam}")
    return lines, replace(cfg.decode, beam_size=beam, nbest=nbest), "nbest" in req


# ------------------------------------------------------------------------------------ the app


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response({"error": message}, status=status, headers=headers)


@web.middleware
async def errors_as_json(request: web.Request, handler: Any) -> web.StreamResponse:
    """Every error answered as ``{"error": ...}``; never a traceback."""
    try:
        return await handler(request)
    except BadRequest as e:
        headers = (
            {"Retry-After": str(request.app["cfg"].retry_after_s)} if e.status == 503 else None
        )
        return _error(e.status, str(e), headers)
    except web.HTTPException as e:
        if e.status == 413:
            return _error(413, f"request body too large (at most {request.app['max_body']} bytes)")
        return _error(e.status, e.reason)
    except asyncio.CancelledError:
        raise
    except Exception:
        log.exception("request failed")
        return _error(500, "internal error (logged by the server)")


class State:
    """What the handlers share: the config, the batcher, the pending-line count."""

    def __init__(self, cfg: ServeConfig, batcher: Batcher, info: dict[str, Any]) -> None:
        self.cfg, self.batcher, self.info = cfg, batcher, info
        self.pending = 0  # lines accepted and not yet answered (event-loop thread only)


async def translate_handler(request: web.Request) -> web.Response:
    state: State = request.app["state"]
    cfg = state.cfg
    body = await request.read()
    lines, decode, want_nbest = parse_request(body, cfg)
    if state.pending + len(lines) > cfg.max_queue:
        raise BadRequest(503, f"server busy ({state.pending} lines queued); retry later")
    state.pending += len(lines)
    try:
        keep = [i for i, line in enumerate(lines) if line.strip()]
        results: list[list[tuple[str, float]]] = [[("", 0.0)] for _ in lines]
        if keep:
            tok = state.batcher.tokenizer
            ids = tok.encode_src([lines[i] for i in keep], num_threads=1)
            loop = asyncio.get_running_loop()
            job = Job(ids, decode, loop.create_future(), loop)
            state.batcher.submit(job)
            for i, hs in zip(keep, await asyncio.shield(job.future), strict=True):
                results[i] = hs
    finally:
        state.pending -= len(lines)
    answer: dict[str, Any] = {"translations": [hs[0][0] for hs in results]}
    if want_nbest:
        answer["nbest"] = [[{"text": t, "score": s} for t, s in hs] for hs in results]
    return web.json_response(answer)


async def health_handler(request: web.Request) -> web.Response:
    state: State = request.app["state"]
    return web.json_response(
        {"status": "ok", "pending": state.pending, "batches": state.batcher.batches}
    )


async def info_handler(request: web.Request) -> web.Response:
    return web.json_response(request.app["state"].info)


def make_app(cfg: ServeConfig, batcher: Batcher, info: dict[str, Any]) -> web.Application:
    # the largest body a valid request can have: every character escaped as \\uXXXX\\uXXXX
    max_body = 12 * cfg.max_chars + 8 * cfg.max_lines + 1024
    app = web.Application(middlewares=[errors_as_json], client_max_size=max_body)
    app["cfg"], app["max_body"] = cfg, max_body
    app["state"] = State(cfg, batcher, info)
    app.router.add_post("/translate", translate_handler)
    app.router.add_get("/health", health_handler)
    app.router.add_get("/info", info_handler)
    return app


def model_info(cfg: ServeConfig, tokenizer: Any) -> dict[str, Any]:
    """What ``GET /info`` answers, from the (first) checkpoint."""
    from nmt.checkpoint import load_checkpoint

    first = cfg.ckpt.split(",")[0].strip()
    ckpt = load_checkpoint(first)
    data = ckpt.get("train_config", {}).get("data", {})
    return {
        "checkpoint": [p.strip() for p in cfg.ckpt.split(",") if p.strip()],
        "source_language": data.get("src"),
        "target_language": data.get("tgt"),
        "model_config": ckpt["model_config"],
        "vocab": {
            "src_vocab_size": tokenizer.src_vocab_size,
            "tgt_vocab_size": tokenizer.tgt_vocab_size,
        },
        "decode": asdict(cfg.decode),
        "quantize": cfg.quantize,
        "batching": {"enabled": cfg.batching, "batch_wait_ms": cfg.batch_wait_ms},
        "limits": {
            "max_lines": cfg.max_lines,
            "max_chars": cfg.max_chars,
            "max_queue": cfg.max_queue,
            "max_beam_size": cfg.max_beam_size,
        },
    }


async def serve(app: web.Application, cfg: ServeConfig) -> None:
    """Listen until SIGTERM/SIGINT, then shut down gracefully."""
    runner = web.AppRunner(
        app, handle_signals=False, shutdown_timeout=cfg.shutdown_timeout_s, access_log=None
    )
    await runner.setup()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        site = web.TCPSite(runner, cfg.host, cfg.port)
        await site.start()
        host, port = runner.addresses[0][:2]
        log.info("listening on http://%s:%d", host, port)
        await stop.wait()
        log.info("shutting down: answering %d accepted lines", app["state"].pending)
    finally:
        await runner.cleanup()  # stop listening, wait for the handlers in progress


def run(cfg: ServeConfig) -> None:
    import torch

    from nmt.quantize import quantize_model
    from nmt.runtime import pick_device, tune_malloc
    from nmt.translation import load_for_decoding

    tune_malloc()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = pick_device("cpu" if cfg.quantize != "none" and cfg.device == "auto" else cfg.device)
    model, tokenizer = load_for_decoding(cfg.ckpt, device)
    model = quantize_model(model, cfg.quantize)
    batcher = Batcher(model, tokenizer, device, cfg)
    app = make_app(cfg, batcher, model_info(cfg, tokenizer))
    batcher.start()
    try:
        asyncio.run(serve(app, cfg))
    finally:
        batcher.stop()
    log.info("stopped")


@hydra.main(version_base="1.3", config_path="configs", config_name="serve")
def main(dcfg: DictConfig) -> None:
    from nmt.checkpoint import CheckpointError

    log_to_stderr()
    with user_errors(CheckpointError, ValueError):
        cfg = to_config(dcfg, ServeConfig)
        try:
            run(cfg)
        except OSError as e:  # the address is in use, not allowed ...
            fail(f"host={cfg.host} port={cfg.port}: cannot listen ({e.strerror})")


if __name__ == "__main__":
    main()
