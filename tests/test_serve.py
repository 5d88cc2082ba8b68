"""nmt-serve: a real server in a subprocess on an ephemeral loopback port, a real HTTP client.

Answers equal offline translation (Translator), one by one and with requests batched together;
the bad-request matrix; a full queue answers 503 with Retry-After; SIGTERM under load answers
every accepted request and exits 0.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from nmt import Translator
from nmt.checkpoint import load_checkpoint
from nmt.config import ConfigError, DecodeConfig, ServeConfig

sys.path.insert(0, str(Path(__file__).resolve().parent))
from tiny_model import tiny_checkpoint  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
# short outputs: a barely trained model writes until the length limit
SHORT = {"max_len_a": 0.5, "max_len_b": 4}
SHORT_ARGS = [f"decode.{k}={v}" for k, v in SHORT.items()]


class Server:
    """``python -m nmt.serve`` on port 0; the port is read from its log."""

    def __init__(self, ckpt: Path, log: Path, *overrides: str) -> None:
        self.log = log
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "nmt.serve", f"ckpt={ckpt}", "port=0", "device=cpu"]
            + ["threads=1", *SHORT_ARGS, *overrides],
            cwd=ROOT,
            env=ENV,
            stdout=subprocess.DEVNULL,
            stderr=log.open("w"),
        )
        deadline = time.monotonic() + 120
        while True:
            m = re.search(r"listening on http://127\.0\.0\.1:(\d+)", log.read_text())
            if m:
                self.url = f"http://127.0.0.1:{m.group(1)}"
                return
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise AssertionError(f"server did not start:\n{log.read_text()}")
            time.sleep(0.1)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=60)


def call(
    url: str, body: bytes | None = None, method: str = "POST", timeout: float = 60
) -> tuple[int, dict[str, Any], dict[str, str]]:
    """(status, JSON answer, headers) of one request with urllib."""
    req = urllib.request.Request(url, data=body, method=method)
    req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as res:
            return res.status, json.loads(res.read()), dict(res.headers)
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read()), dict(e.headers)


def translate(url: str, request: dict[str, Any]) -> tuple[int, dict[str, Any], dict[str, str]]:
    return call(url + "/translate", json.dumps(request).encode())


@pytest.fixture(scope="module")
def model() -> tuple[Path, list[str]]:
    ckpt, corpus = tiny_checkpoint()
    lines = (corpus / "test.es").read_text(encoding="utf-8").splitlines()
    return ckpt, lines


@pytest.fixture(scope="module")
def server(
    model: tuple[Path, list[str]], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    srv = Server(model[0], log, "batch_wait_ms=100", "decode.beam_size=3")
    yield srv.url
    assert srv.stop() == 0, log.read_text()
    assert "Traceback" not in log.read_text()


def test_answers_equal_offline_translation(server: str, model: tuple[Path, list[str]]) -> None:
    ckpt, lines = model
    text = lines[:6] + ["", "   "] + lines[6:8]
    offline = Translator.load(ckpt, device="cpu", beam_size=3, nbest=3, **SHORT)
    status, answer, _ = translate(server, {"text": text})  # decode defaults: beam 3
    assert status == 200
    assert answer == {"translations": offline.translate(text)}
    assert answer["translations"][6:8] == ["", ""]
    status, answer, _ = translate(server, {"text": text[:4], "nbest": 3})
    assert status == 200
    want = offline.translate_nbest(text[:4])
    got = [[(h["text"], h["score"]) for h in hs] for hs in answer["nbest"]]
    assert got == want  # scores too, to the last bit
    assert answer["translations"] == [hs[0][0] for hs in want]
    greedy = Translator.load(ckpt, device="cpu", beam_size=1, **SHORT)
    status, answer, _ = translate(server, {"text": text, "beam_size": 1})
    assert answer["translations"] == greedy.translate(text)


def test_concurrent_requests_are_batched_and_equal_offline(
    server: str, model: tuple[Path, list[str]]
) -> None:
    ckpt, lines = model
    offline = Translator.load(ckpt, device="cpu", beam_size=3, nbest=3, **SHORT)
    want = offline.translate_nbest(lines[:12])
    batches_before = call(server + "/health", method="GET")[1]["batches"]
    results: dict[int, tuple[int, dict[str, Any], dict[str, str]]] = {}

    def one(i: int) -> None:
        results[i] = translate(server, {"text": [lines[i]], "nbest": 3})

    threads = [threading.Thread(target=one, args=(i,)) for i in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i in range(12):
        status, answer, _ = results[i]
        assert status == 200
        assert [(h["text"], h["score"]) for h in answer["nbest"][0]] == want[i]
    batches = call(server + "/health", method="GET")[1]["batches"] - batches_before
    assert batches < 12  # sentences of requests that arrived together shared a batch


def test_health_and_info(server: str, model: tuple[Path, list[str]]) -> None:
    status, health, _ = call(server + "/health", method="GET")
    assert status == 200 and health["status"] == "ok" and health["pending"] == 0
    status, info, _ = call(server + "/info", method="GET")
    assert status == 200
    assert info["source_language"] == "es" and info["target_language"] == "en"
    assert info["checkpoint"] == [str(model[0])]
    # the model's own sizes (tokenizer.target_vocab=used would give fewer target rows)
    vocab = load_checkpoint(model[0])["vocab"]
    assert info["vocab"] == {"src_vocab_size": 300, "tgt_vocab_size": vocab["tgt_vocab_size"]}
    assert info["model_config"]["emb_size"] > 0
    assert info["decode"]["beam_size"] == 3


BAD_REQUESTS: list[tuple[str, bytes, int, str]] = [
    ("empty body", b"", 400, "empty body"),
    ("not JSON", b"{text: [", 400, "not JSON"),
    ("a JSON list", b'["a"]', 400, "JSON object"),
    ("no text", b'{"beam_size": 2}', 400, "missing key 'text'"),
    ("text a string", b'{"text": "hola"}', 400, "list of strings"),
    ("text of numbers", b'{"text": [1, 2]}', 400, "list of strings"),
    ("empty list", b'{"text": []}', 400, "empty list"),
    ("beam a string", b'{"text": ["hola"], "beam_size": "5"}', 400, "'beam_size' must be"),
    ("beam true", b'{"text": ["hola"], "beam_size": true}', 400, "'beam_size' must be"),
    ("beam 0", b'{"text": ["hola"], "beam_size": 0}', 400, "between 1 and 16"),
    ("beam 1000", b'{"text": ["hola"], "beam_size": 1000}', 400, "between 1 and 16"),
    ("nbest > beam", b'{"text": ["hola"], "beam_size": 2, "nbest": 3}', 400, "'nbest'"),
    ("unknown key", b'{"text": ["hola"], "beam": 2}', 400, "unknown key 'beam'"),
    ("line break", b'{"text": ["a\\nb"]}', 400, "line break"),
    ("invalid UTF-8", b'{"text": ["\xff\xfe"]}', 400, "not valid UTF-8"),
    ("too many lines", json.dumps({"text": ["a"] * 65}).encode(), 413, "65 lines"),
    ("a 50,000-character line", json.dumps({"text": ["a" * 50_000]}).encode(), 413, "50000"),
    ("a 10 MB request", json.dumps({"text": ["ab " * 3_500_000]}).encode(), 413, "too large"),
]


@pytest.mark.parametrize(
    "body,status,message", [r[1:] for r in BAD_REQUESTS], ids=[r[0] for r in BAD_REQUESTS]
)
def test_bad_requests_get_a_message(server: str, body: bytes, status: int, message: str) -> None:
    got, answer, _ = call(server + "/translate", body)
    assert got == status, answer
    assert set(answer) == {"error"} and message in answer["error"]
    assert "Traceback" not in answer["error"]


def test_wrong_paths_and_methods(server: str) -> None:
    assert call(server + "/nothing", method="GET")[:2] == (404, {"error": "Not Found"})
    status, answer, _ = call(server + "/translate", method="GET")
    assert status == 405 and "error" in answer
    assert call(server + "/health", method="GET")[0] == 200  # still serving


def test_full_queue_answers_503(model: tuple[Path, list[str]], tmp_path: Path) -> None:
    ckpt, lines = model
    srv = Server(ckpt, tmp_path / "log", "max_queue=8", "max_lines=8", "batching=false")
    try:
        offline = Translator.load(ckpt, device="cpu", beam_size=2, **SHORT)
        request = {"text": lines[:8], "beam_size": 2}
        want = offline.translate(lines[:8])
        results: list[tuple[int, dict[str, Any], dict[str, str]]] = []

        def one() -> None:
            results.append(translate(srv.url, request))

        threads = [threading.Thread(target=one) for _ in range(12)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        busy = [r for r in results if r[0] == 503]
        assert busy, "a full queue should refuse requests"
        assert all(r[2]["Retry-After"] == "1" and "busy" in r[1]["error"] for r in busy)
        assert all(r[1] == {"translations": want} for r in results if r[0] != 503)
        assert sum(r[0] == 200 for r in results) >= 1
    finally:
        assert srv.stop() == 0


def test_sigterm_under_load_answers_every_accepted_request(
    model: tuple[Path, list[str]], tmp_path: Path
) -> None:
    ckpt, lines = model
    log = tmp_path / "log"
    srv = Server(ckpt, log, "batching=false", "decode.beam_size=5")
    offline = Translator.load(ckpt, device="cpu", beam_size=5, **SHORT)
    requests = [lines[i % 16 : i % 16 + 4] for i in range(16)]
    total = sum(map(len, requests))
    results: dict[int, Any] = {}

    def one(i: int) -> None:
        try:
            results[i] = translate(srv.url, {"text": requests[i]})
        except (urllib.error.URLError, ConnectionError) as e:
            results[i] = e

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(requests))]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 60
    while True:  # every request accepted (answered or pending), most still pending
        pending = call(srv.url + "/health", method="GET")[1]["pending"]
        answered = sum(len(requests[i]) for i in list(results))
        if pending + answered >= total:
            break
        assert time.monotonic() < deadline, "requests never queued up"
        time.sleep(0.01)
    srv.proc.send_signal(signal.SIGTERM)
    for t in threads:
        t.join()
    assert srv.proc.wait(timeout=60) == 0, log.read_text()
    accepted = re.search(r"answering (\d+) accepted lines", log.read_text())
    assert accepted and int(accepted.group(1)) > 0, log.read_text()  # SIGTERM came under load
    for i, result in results.items():
        assert not isinstance(result, Exception), result
        assert result[0] == 200 and result[1] == {"translations": offline.translate(requests[i])}
    assert len(results) == len(requests)
    assert "Traceback" not in log.read_text()
    with pytest.raises(urllib.error.URLError):  # no longer listening
        call(srv.url + "/health", method="GET", timeout=5)


def test_readme_server_example(server: str) -> None:
    """The README's server commands, as written (on the test model and a free port)."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    block = next(b for b in re.findall(r"```bash\n(.*?)```", readme, re.S) if "nmt.serve" in b)
    commands = block.replace("\\\n", " ").splitlines()
    start = shlex.split(commands[0].rstrip("&"))
    assert start[:3] == [".venv/bin/python", "-m", "nmt.serve"] and commands[-1].startswith("kill")
    # the server fixture runs this very command: only ckpt and port differ
    assert [a.split("=")[0] for a in start[3:]] == ["ckpt", "port"]
    port = server.rsplit(":", 1)[1]
    answers = []
    for command in commands[1:-1]:  # the curl commands; the fixture's teardown is the kill
        assert command.startswith("curl ")
        res = subprocess.run(
            command.replace("localhost:8000", f"127.0.0.1:{port}"),
            shell=True,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert res.returncode == 0, res.stderr
        answers.append(json.loads(res.stdout))
    assert len(answers[0]["translations"]) == 2
    assert answers[1]["status"] == "ok" and "model_config" in answers[2]


@pytest.mark.parametrize(
    "overrides,message",
    [
        ({"port": 70000}, "port=70000: must be in [0, 65535]"),
        ({"max_lines": 300}, "max_lines=300: must not exceed max_queue=256"),
        ({"quantize": "int4"}, "quantize=int4: unknown value"),
        ({"batch_wait_ms": -1.0}, "batch_wait_ms=-1.0: must be 0 or more"),
        ({"max_queue": 0}, "max_queue=0: must be 1 or more"),
        ({"host": ""}, "host='': must not be empty"),
    ],
)
def test_serve_config_is_checked(overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        ServeConfig(ckpt="x", **overrides)
    with pytest.raises(ConfigError, match=re.escape("decode.beam_size=20: must not exceed")):
        ServeConfig(ckpt="x", decode=DecodeConfig(beam_size=20))


@pytest.mark.slow
def test_load_test_script(model: tuple[Path, list[str]], tmp_path: Path) -> None:
    """scripts/load_test.py end to end, with tiny bounds: every request answered, exit 0."""
    ckpt, _ = model
    out = tmp_path / "load.json"
    res = subprocess.run(
        [
            sys.executable,
            "scripts/load_test.py",
            str(ckpt),
            "--src",
            str(ckpt.parents[1] / "corpus/test.es"),
        ]
        + ["--clients", "1,4", "--batching", "on,off", "--quantize", "none,int8"]
        + ["--requests", "4", "--seconds", "30", "--threads", "1", "--warmup", "2", "--rounds", "2"]
        + ["--json", str(out)]
        + [f"--override={a}" for a in SHORT_ARGS],
        cwd=ROOT,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert res.returncode == 0, res.stderr
    rows = json.loads(out.read_text())
    assert len(rows) == 8
    assert all(r["answered"] == r["requests"] == 8 and r["errors"] == 0 for r in rows)
    assert all(len(r["rounds_requests_per_s"]) == 2 for r in rows)
    assert "| int8 | off | 4 |" in res.stdout
