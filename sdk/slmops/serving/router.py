"""A local stand-in for a managed online endpoint's gateway: one port on 127.0.0.1 in front of the local
deployments (`slmops serve` processes, one per slot), honouring the traffic split, mirrored traffic and the
`azureml-model-deployment` header as Azure ML does. `slmops promote --local` starts it; its state is one JSON
file that the promotion rewrites (read again whenever it changes):

    {"name", "port", "key", "router_pid",
     "slots": {"blue": {"model", "ref", "port", "key", "pid"}, ...},
     "traffic": {"blue": 100}, "mirror": {"green": 10}}

    python -m slmops.serving.router --state ~/.slmops/endpoints/tone       # run it (promote does this)
    python -m slmops.serving.router --state ~/.slmops/endpoints/tone --stop
"""

from __future__ import annotations

import argparse
import hmac
import json
import os
import random
import signal
import threading
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

DEPLOYMENT_HEADER = "azureml-model-deployment"
MAX_BODY_BYTES = 1_048_576


class StateFile:
    """The endpoint's state.json, re-read when its modification time changes."""

    def __init__(self, path: Path):
        self.path = path
        self._mtime = None
        self._state = {}
        self._lock = threading.Lock()

    def get(self) -> dict:
        with self._lock:
            mtime = self.path.stat().st_mtime_ns
            if mtime != self._mtime:
                self._state, self._mtime = json.loads(self.path.read_text()), mtime
            return self._state


def pick_slot(traffic: dict[str, int], rng: random.Random) -> str | None:
    """A slot drawn with probability traffic[slot]/100; None when the draw falls on unassigned traffic."""
    draw = rng.random() * 100  # in [0, 100)
    for slot, pct in sorted(traffic.items()):
        if draw < pct:
            return slot
        draw -= pct
    return None


def forward(slot: dict, path: str, body: bytes, timeout: float = 120) -> tuple[int, bytes, str]:
    req = urllib.request.Request(f"http://127.0.0.1:{slot['port']}{path}", data=body, method="POST",
                                 headers={"Content-Type": "application/json",
                                          "Authorization": f"Bearer {slot['key']}"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read(), r.headers.get("Content-Type", "application/json")
    except urllib.error.HTTPError as e:
        return e.code, e.read(), e.headers.get("Content-Type", "application/json")
    except (urllib.error.URLError, OSError) as e:
        return 502, json.dumps({"message": f"deployment unreachable: {e}"}).encode(), "application/json"


def make_handler(state: StateFile, rng: random.Random):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, fmt, *args):  # quiet: promote reads outcomes, not access logs
            pass

        def reply(self, status: int, body: bytes, content_type="application/json", deployment=None):
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            if deployment:
                self.send_header(DEPLOYMENT_HEADER, deployment)
            self.end_headers()
            self.wfile.write(body)

        def error(self, status: int, message: str):
            self.reply(status, json.dumps({"message": message}).encode())

        def do_GET(self):
            if self.path in ("/health/live", "/health/ready"):
                return self.reply(200, json.dumps({"status": self.path.rsplit("/", 1)[1]}).encode())
            if self.path == "/":
                return self.reply(200, b"Healthy", "text/plain")
            return self.error(404, f"no route {self.path}; POST /score")

        def do_POST(self):
            st = state.get()
            length = self.headers.get("Content-Length", "0")
            if not length.isdigit() or int(length) > MAX_BODY_BYTES:
                self.close_connection = True
                return self.error(413, f"request body of {length} bytes exceeds the limit of {MAX_BODY_BYTES}")
            body = self.rfile.read(int(length))
            given = self.headers.get("Authorization", "").encode()
            if not hmac.compare_digest(given, f"Bearer {st['key']}".encode()):
                return self.error(401, "missing or wrong key: send 'Authorization: Bearer <key>'")
            if self.path != "/score":
                return self.error(404, f"no route {self.path}; POST /score")
            wanted = self.headers.get(DEPLOYMENT_HEADER)
            if wanted:
                if wanted not in st["slots"]:
                    return self.error(404, f"deployment {wanted!r} not found; deployments: {sorted(st['slots'])}")
                slot = wanted
            else:
                slot = pick_slot(st["traffic"], rng)
                if slot is None or slot not in st["slots"]:
                    return self.error(503, "no deployment takes this traffic; set the endpoint's traffic")
                for mirror_slot, pct in st.get("mirror", {}).items():
                    if mirror_slot in st["slots"] and rng.random() * 100 < pct:
                        threading.Thread(target=forward, args=(st["slots"][mirror_slot], "/score", body),
                                         daemon=True).start()
            status, data, ctype = forward(st["slots"][slot], "/score", body)
            self.reply(status, data, ctype, deployment=slot)

    return Handler


def serve(state_path: Path, port: int, seed: int | None = None) -> None:
    server = ThreadingHTTPServer(("127.0.0.1", port), make_handler(StateFile(state_path), random.Random(seed)))
    server.daemon_threads = True
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown).start())
    server.serve_forever()


def stop_all(state: dict) -> None:
    """Terminate the router and every slot server named in a state (each was started in its own session)."""
    pids = [s["pid"] for s in state.get("slots", {}).values()] + [state.get("router_pid")]
    for pid in pids:
        if pid:
            try:
                os.killpg(pid, signal.SIGTERM)
            except (ProcessLookupError, PermissionError):
                pass


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--state", required=True, type=Path, help="the local endpoint's folder (holds state.json)")
    ap.add_argument("--stop", action="store_true", help="stop the router and its deployments, then exit")
    ap.add_argument("--seed", type=int, default=None, help="seed the traffic draw (tests)")
    args = ap.parse_args(argv)
    state_path = args.state / "state.json"
    state = json.loads(state_path.read_text())
    if args.stop:
        stop_all(state)
        return
    serve(state_path, int(state["port"]), args.seed)


if __name__ == "__main__":
    main()
