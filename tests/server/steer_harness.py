"""steer_harness — what the Python integration tests share: a real `steer serve` process on a free
port, HTTP helpers for /healthz and /metrics, a raw-socket WebSocket client for the things a polite
client library will not do (stop reading, send broken frames), and a tiny TAP reporter.

It is not a test framework: tests are plain async functions run one after another in one process;
each starts the servers it needs and the harness kills whatever is left at exit.
Environment: STEER_BIN (default build/steer), STEER_ROOT (default: the repository this file is in).
"""
import asyncio
import atexit
import base64
import http.client
import json
import os
import queue
import re
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import traceback

ROOT = os.path.abspath(os.environ.get("STEER_ROOT") or
                       os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
BIN = os.environ.get("STEER_BIN") or "build/steer"
sys.path.insert(0, os.path.join(ROOT, "clients", "python"))

import steer_client  # noqa: E402  (the library under test, from clients/python)

SERVING_RE = re.compile(r"steer: serving .* at (http://(\S+?):(\d+))/?\s*$")
_live = []  # servers to kill at exit


class Server:
    """One `steer serve --port 0 ARGS...` process. start() waits for its URL line; stop() sends
    SIGTERM and returns the exit status (None if it had to be killed)."""

    def __init__(self, *args, start_timeout=120):
        self.args = [str(a) for a in args]
        # Each server gets its own feedback store unless the test names one (--data DIR).
        self._data = None
        if "--data" not in self.args:
            self._data = tempfile.TemporaryDirectory(prefix="steer_data_")
            self.args += ["--data", self._data.name]
        self.start_timeout = start_timeout
        self.proc = None
        self.url = self.host = self.port = None
        self.stdout_lines = []
        self.stderr_file = tempfile.TemporaryFile()

    def start(self):
        binary = BIN if os.path.isabs(BIN) else os.path.join(ROOT, BIN)
        cmd = [binary, "serve", "--port", "0"] + self.args
        self.proc = subprocess.Popen(cmd, cwd=ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=self.stderr_file, text=True, bufsize=1,
                                     preexec_fn=_die_with_parent)
        _live.append(self)
        lines = queue.Queue()

        def pump():  # keeps reading stdout so that the server never blocks on a full pipe
            for line in self.proc.stdout:
                self.stdout_lines.append(line)
                lines.put(line)
            lines.put(None)
        threading.Thread(target=pump, daemon=True).start()
        deadline = time.monotonic() + self.start_timeout
        while True:
            try:
                line = lines.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                self.kill()
                raise RuntimeError(f"{' '.join(cmd)}: no 'steer: serving' line within "
                                   f"{self.start_timeout}s\n{self.stderr_tail()}")
            if line is None:
                rc = self.proc.wait()
                raise RuntimeError(f"{' '.join(cmd)} exited {rc} before serving\n{self.stderr_tail()}")
            m = SERVING_RE.search(line)
            if m:
                self.url, self.host, self.port = m.group(1), m.group(2), int(m.group(3))
                self.ws_url = steer_client.ws_url(self.url)
                return self

    def stderr_tail(self, n=2000):
        self.stderr_file.seek(0)
        return self.stderr_file.read().decode(errors="replace")[-n:]

    def running(self):
        return self.proc is not None and self.proc.poll() is None

    def signal(self, sig=signal.SIGTERM):
        if self.running():
            self.proc.send_signal(sig)

    def wait(self, timeout=30):
        """Waits for the process to exit; returns its status, or None if it did not."""
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def stop(self, timeout=30):
        """SIGTERM, then waits; kills it if it does not exit. Returns the exit status or None."""
        if self.proc is None:
            return None
        if self.proc.poll() is not None:
            return self.proc.returncode
        self.proc.send_signal(signal.SIGTERM)
        rc = self.wait(timeout)
        if rc is None:
            self.kill()
        return rc

    def stop_ok(self, tap, what="server exits 0 on SIGTERM"):
        """stop(), reported as a TAP line with the server's stderr when it is not a clean 0."""
        rc = self.stop()
        return tap.ok(rc == 0, what, f"exit status {rc}\n{self.stderr_tail()}")

    def kill(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def get(self, path, timeout=30, headers=None):
        return http_get(self.host, self.port, path, timeout, headers)

    def healthz(self, timeout=30):
        """(HTTP status, parsed JSON) of GET /healthz."""
        status, _, body = self.get("/healthz", timeout)
        return status, json.loads(body)

    def metrics(self, timeout=30):
        status, _, body = self.get("/metrics", timeout)
        if status != 200:
            raise RuntimeError(f"GET /metrics: HTTP {status}")
        return parse_metrics(body.decode())

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


def _die_with_parent():
    """In the child before exec: SIGKILL it when the test process dies (Linux prctl)."""
    try:
        import ctypes
        ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except Exception:
        pass


@atexit.register
def _kill_all():
    for s in _live:
        s.kill()


def http_get(host, port, path, timeout=30, headers=None):
    """GET over a fresh connection. Returns (status, headers dict (lower-case names), body bytes)."""
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request("GET", path, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


METRIC_LINE_RE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)")
LABEL_RE = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def metric_key(name, **labels):
    if not labels:
        return name
    return name + "{" + ",".join(f'{k}="{labels[k]}"' for k in sorted(labels)) + "}"


def parse_metrics(text):
    """Prometheus text format into {'name' or 'name{a="x",b="y"}' (labels sorted): float}."""
    out = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = METRIC_LINE_RE.match(line)
        if not m:
            raise ValueError(f"bad metrics line: {line!r}")
        labels = dict(LABEL_RE.findall(m.group(2) or ""))
        out[metric_key(m.group(1), **labels)] = float(m.group(3))
    return out


def metric(metrics, name, default=0.0, **labels):
    """One value of parse_metrics' dict; default when the series is absent (counters start absent)."""
    return metrics.get(metric_key(name, **labels), default)


async def poll(fn, timeout, interval=0.1):
    """Calls fn() (sync) until it returns a truthy value or timeout passes; returns the last value."""
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while True:
        value = await loop.run_in_executor(None, fn)
        if value or loop.time() >= end:
            return value
        await asyncio.sleep(interval)


class RawWS:
    """A blocking WebSocket client on a plain socket: it reads only when told to, and sends any frame
    (text, fragments, bad opcodes). rcvbuf shrinks the kernel's receive buffer before connecting."""

    def __init__(self, host, port, path="/ws", protocol="steer.v1", origin=None, rcvbuf=None,
                 timeout=30):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.settimeout(timeout)
        self.sock.connect((host, port))
        key = base64.b64encode(os.urandom(16)).decode()
        req = (f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
               f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n")
        if protocol:
            req += f"Sec-WebSocket-Protocol: {protocol}\r\n"
        if origin:
            req += f"Origin: {origin}\r\n"
        self.sock.sendall((req + "\r\n").encode())
        self.buf = b""
        while b"\r\n\r\n" not in self.buf:
            chunk = self.sock.recv(4096)
            if not chunk:
                break
            self.buf += chunk
        head, _, self.buf = self.buf.partition(b"\r\n\r\n")
        status_line = head.split(b"\r\n", 1)[0].decode(errors="replace")
        self.status = int(status_line.split()[1]) if len(status_line.split()) > 1 else 0

    def send_frame(self, opcode, payload, fin=True):
        """Sends one masked frame (opcode 1 text, 2 binary, 0 continuation, 8 close, 9 ping...)."""
        n = len(payload)
        head = bytes([(0x80 if fin else 0) | opcode])
        if n < 126:
            head += bytes([0x80 | n])
        elif n < 65536:
            head += bytes([0x80 | 126]) + struct.pack(">H", n)
        else:
            head += bytes([0x80 | 127]) + struct.pack(">Q", n)
        mask = os.urandom(4)
        body = bytes(b ^ mask[i & 3] for i, b in enumerate(payload))
        self.sock.sendall(head + mask + body)

    def send(self, msg):
        self.send_frame(2, steer_client.pack(msg))

    def _read(self, n):
        while len(self.buf) < n:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("connection closed")
            self.buf += chunk
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def recv_frame(self):
        """(opcode, payload) of the next frame (no reassembly; servers here send whole messages)."""
        b0, b1 = self._read(2)
        n = b1 & 0x7F
        if n == 126:
            n = struct.unpack(">H", self._read(2))[0]
        elif n == 127:
            n = struct.unpack(">Q", self._read(8))[0]
        mask = self._read(4) if b1 & 0x80 else None
        payload = self._read(n)
        if mask:
            payload = bytes(b ^ mask[i & 3] for i, b in enumerate(payload))
        return b0 & 0x0F, payload

    def recv(self):
        """The next data message, decoded (pings answered, close raises ConnectionError)."""
        while True:
            op, payload = self.recv_frame()
            if op == 9:
                self.send_frame(10, payload)
            elif op == 8:
                code = struct.unpack(">H", payload[:2])[0] if len(payload) >= 2 else None
                raise ConnectionError(f"closed by server with {code}")
            elif op in (1, 2):
                return steer_client.unpack(payload)

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass


class Tap:
    """TAP lines `ok N - what` / `not ok N - what`, a plan at the end, and the exit status."""

    def __init__(self):
        self.n = self.failed = 0

    def ok(self, cond, what, diag=None):
        self.n += 1
        print(f"{'ok' if cond else 'not ok'} {self.n} - {what}", flush=True)
        if not cond:
            self.failed += 1
            if diag is not None:
                for line in str(diag).splitlines():
                    print(f"#   {line}", flush=True)
        return bool(cond)

    def eq(self, got, want, what):
        return self.ok(got == want, what, f"got {got!r}, want {want!r}")

    def diag(self, text):
        for line in str(text).splitlines():
            print(f"# {line}", flush=True)

    def done(self):
        print(f"1..{self.n}")
        print(f"# {self.n - self.failed} passed, {self.failed} failed", flush=True)
        return 1 if self.failed or self.n == 0 else 0


def run(tests, timeout=60):
    """Runs each async test(tap) in turn with a timeout; an exception or a timeout is a failure.
    Exits the process with the TAP status."""
    tap = Tap()
    # A runner's timeout sends SIGTERM: exit through atexit so that the servers are killed too.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    async def main():
        for test in tests:
            name = test.__name__
            try:
                await asyncio.wait_for(test(tap), timeout)
            except asyncio.TimeoutError:
                tap.ok(False, f"{name} finished", f"timed out after {timeout}s")
            except Exception:
                tap.ok(False, f"{name} finished", traceback.format_exc())
    try:
        asyncio.run(main())
    finally:
        _kill_all()
    sys.exit(tap.done())
