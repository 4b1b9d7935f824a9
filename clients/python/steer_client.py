"""steer_client — a small asyncio client for `steer serve` (protocol steer.v1, docs/protocol.md).

It speaks the protocol and nothing more: no retries, no reconnects, no pacing of its own. One task
reads the WebSocket and queues every server message in arrival order; `recv`, `messages` and
`next_frame` take them from that queue. Needs Debian's python3-websockets (10.x) and python3-msgpack.

    async with connect("ws://127.0.0.1:8080/ws", user="ada") as c:
        await c.stream(1, mode="walk", n=8)
        for _ in range(8):
            f = await c.next_frame(timeout=10)
            open(f"{f.seq}.png", "wb").write(f.data)
        print(await c.stop(1), "frames sent")
"""
import asyncio
import io

import msgpack
import websockets

PROTOCOL = "steer.v1"


class ServerError(Exception):
    """An `error` message from the server: .code (e.g. "bad_field"), .msg, .ref (stream id or None)."""

    def __init__(self, code, msg, ref=None):
        super().__init__(f"{code}: {msg}" + (f" (stream {ref})" if ref is not None else ""))
        self.code, self.msg, self.ref = code, msg, ref


class Frame:
    """One `frame` message. Fields as in the protocol; `cls` is its `class`; `data` is bytes."""

    __slots__ = ("stream", "frame", "seq", "model_version", "policy_version", "cls", "w", "h", "c",
                 "format", "data", "pair", "side", "fields")

    def __init__(self, m):
        self.fields = m  # the whole decoded map, unknown keys included
        self.stream, self.frame, self.seq = m.get("stream"), m.get("frame"), m.get("seq")
        self.model_version, self.policy_version = m.get("model_version"), m.get("policy_version")
        self.cls, self.w, self.h, self.c = m.get("class"), m.get("w"), m.get("h"), m.get("c")
        self.format, self.data = m.get("format"), m.get("data")
        self.pair, self.side = m.get("pair"), m.get("side")

    def image(self):
        """Pixels as bytes, h*w*c, row-major HWC, 0..255. raw8 is returned as is; PNG is decoded
        with Pillow (Debian's python3-pil), imported only here so the rest needs no Pillow."""
        if self.format == "raw8":
            return bytes(self.data)
        from PIL import Image
        with Image.open(io.BytesIO(self.data)) as im:
            c = {"L": 1, "RGB": 3}.get(im.mode)
            if (im.width, im.height, c) != (self.w, self.h, self.c):
                raise ValueError(f"PNG is {im.width}x{im.height} {im.mode}, frame says "
                                 f"{self.w}x{self.h}x{self.c}")
            return im.tobytes()

    def __repr__(self):
        extra = f" pair={self.pair} side={self.side}" if self.side is not None else ""
        return (f"Frame(stream={self.stream} seq={self.seq} frame={self.frame} class={self.cls} "
                f"{self.w}x{self.h}x{self.c} {self.format} {len(self.data or b'')}B{extra})")


def ws_url(url):
    """Accepts ws://HOST:PORT[/ws] or the http://HOST:PORT/ the server prints; returns the ws URL."""
    if url.startswith("http://"):
        url = "ws://" + url[len("http://"):]
    elif url.startswith("https://"):
        url = "wss://" + url[len("https://"):]
    scheme, rest = url.split("://", 1)
    host, _, path = rest.partition("/")
    return f"{scheme}://{host}/{path or 'ws'}"


def pack(msg):
    return msgpack.packb(msg, use_bin_type=True)


def unpack(data):
    return msgpack.unpackb(data, raw=False, strict_map_key=False)


class Client:
    """A connected session. Make it with `connect`; it owns the WebSocket and its reader task."""

    def __init__(self, ws):
        self.ws = ws
        self.welcome = None
        self._queue = asyncio.Queue()
        self._stops = {}  # stream id -> future of `sent`
        self.policy = None  # the last `policy` message: how learning from this user goes
        self.policies = []  # every `policy` message, in order
        self._policy_changed = asyncio.Event()
        self._reader = None
        self._closed_exc = None

    def _start(self):
        self._reader = asyncio.ensure_future(self._read())

    async def _read(self):
        try:
            while True:
                raw = await self.ws.recv()
                if isinstance(raw, str):
                    msg = {"t": "_text", "text": raw}
                else:
                    try:
                        msg = unpack(raw)
                    except Exception as e:  # the server sent something that is not msgpack
                        msg = {"t": "_undecodable", "error": str(e), "bytes": raw}
                kind = msg.get("t") if isinstance(msg, dict) else None
                if kind == "frame":
                    msg = Frame(msg)
                elif kind == "stopped" and msg.get("id") in self._stops:
                    # Answers a stop() call: it goes to that caller, not into the queue.
                    fut = self._stops.pop(msg["id"])
                    if not fut.done():  # done: that stop() timed out
                        fut.set_result(msg.get("sent"))
                    continue
                elif kind == "error" and msg.get("ref") in self._stops and \
                        msg.get("code") in ("unknown_stream", "bad_field"):
                    fut = self._stops.pop(msg["ref"])
                    if not fut.done():
                        fut.set_exception(ServerError(msg.get("code"), msg.get("msg"), msg.get("ref")))
                    continue
                elif kind == "policy":
                    # Status, not a reply: kept in .policy / .policies, never queued.
                    self.policy = msg
                    self.policies.append(msg)
                    self._policy_changed.set()
                    continue
                self._queue.put_nowait(msg)
        except websockets.ConnectionClosed as e:
            self._closed_exc = e
        finally:
            self._policy_changed.set()  # wake wait_policy() to see the end
            if self._closed_exc is None:  # cancelled, or the reader failed
                self._closed_exc = websockets.ConnectionClosedError(None, None)
            for fut in self._stops.values():
                if not fut.done():
                    fut.set_exception(self._closed_exc)
            self._stops.clear()
            self._queue.put_nowait(None)  # end-of-stream marker

    @property
    def close_code(self):
        """The close code once closed (1006 when no close frame came), None while open."""
        return self.ws.close_code

    async def wait_closed(self, timeout=None):
        """Waits until the server closes the connection; returns the close code."""
        await asyncio.wait_for(self.ws.wait_closed(), timeout)
        return self.ws.close_code

    async def send(self, msg):
        """Sends one message (a dict) as msgpack."""
        await self.ws.send(pack(msg))

    async def send_raw(self, data):
        """Sends bytes (a binary message) or str (a text message) exactly as given. For tests."""
        await self.ws.send(data)

    async def hello(self, user=None, token=None, timeout=30):
        """Sends hello and returns the welcome map; raises ServerError if the server refuses."""
        msg = {"t": "hello"}
        if user is not None:
            msg["user"] = user
        if token is not None:
            msg["token"] = token
        await self.send(msg)
        reply = await self.recv(timeout)
        if isinstance(reply, dict) and reply.get("t") == "error":
            raise ServerError(reply.get("code"), reply.get("msg"), reply.get("ref"))
        if not (isinstance(reply, dict) and reply.get("t") == "welcome"):
            raise ServerError("protocol", f"expected welcome, got {reply!r}")
        self.welcome = reply
        return reply

    async def stream(self, id, mode=None, format=None, n=None, fps=None, cls=None, seed=None,
                     step=None, **extra):
        """Opens stream `id`; fields left None take the server's defaults. Errors come as messages."""
        msg = {"t": "stream", "id": id}
        for key, value in (("mode", mode), ("format", format), ("n", n), ("fps", fps),
                           ("class", cls), ("seed", seed), ("step", step)):
            if value is not None:
                msg[key] = value
        msg.update(extra)
        await self.send(msg)

    async def credit(self, id, n):
        """Grants n more frames on stream id."""
        await self.send({"t": "credit", "id": id, "n": n})

    async def feedback(self, id, kind, **fields):
        """Sends feedback `kind` ("rate": frame=, value=; "pair": winner=, loser=, tie=;
        "choose": chosen=, among=) with idempotency key `id`. The server answers later with
        `ack {id}` once it is stored, or an `error`; read them with recv()."""
        await self.send({"t": "feedback", "id": id, "kind": kind, **fields})

    async def stop(self, id, timeout=30):
        """Stops stream id and returns `sent` from its `stopped`; frames before it stay queued.
        Raises ServerError (unknown_stream) if id is not open."""
        fut = asyncio.get_running_loop().create_future()
        self._stops[id] = fut
        await self.send({"t": "stop", "id": id})
        return await asyncio.wait_for(fut, timeout)

    async def recv(self, timeout=None):
        """The next server message: a Frame or a dict. Raises ConnectionClosed at the end and
        asyncio.TimeoutError after timeout seconds (None: wait for ever)."""
        msg = await asyncio.wait_for(self._queue.get(), timeout)
        if msg is None:
            self._queue.put_nowait(None)  # keep the marker for later calls
            raise self._closed_exc
        return msg

    def pending(self):
        """Messages already received and not yet taken, without waiting."""
        out = []
        while not self._queue.empty():
            msg = self._queue.get_nowait()
            if msg is None:
                self._queue.put_nowait(None)
                break
            out.append(msg)
        return out

    async def messages(self):
        """Every server message in order (Frames and dicts) until the connection closes."""
        while True:
            try:
                yield await self.recv()
            except websockets.ConnectionClosed:
                return

    async def wait_policy(self, version, timeout=None):
        """Waits until a `policy` message with version >= `version` has come and returns it
        (the server draws this user's next frames from that policy). asyncio.TimeoutError after
        timeout seconds."""
        async def wait():
            while not (self.policy and self.policy.get("version", 0) >= version):
                if self._closed_exc is not None:
                    raise self._closed_exc
                self._policy_changed.clear()
                await self._policy_changed.wait()
            return self.policy
        return await asyncio.wait_for(wait(), timeout)

    async def next_frame(self, timeout=None):
        """The next frame; other messages are skipped, except `error`, raised as ServerError."""
        loop = asyncio.get_running_loop()
        end = None if timeout is None else loop.time() + timeout
        while True:
            left = None if end is None else max(0.0, end - loop.time())
            msg = await self.recv(left)
            if isinstance(msg, Frame):
                return msg
            if isinstance(msg, dict) and msg.get("t") == "error":
                raise ServerError(msg.get("code"), msg.get("msg"), msg.get("ref"))

    async def close(self, code=1000):
        await self.ws.close(code)
        if self._reader:
            await asyncio.gather(self._reader, return_exceptions=True)


class connect:
    """`async with connect(url, user=None, token=None) as c:` opens the WebSocket (subprotocol
    steer.v1), says hello (unless hello=False) and yields a Client with c.welcome set.
    Keyword arguments other than these go to websockets.connect (e.g. origin, extra_headers)."""

    def __init__(self, url, user=None, token=None, hello=True, timeout=30, **ws_options):
        self.url, self.user, self.token = ws_url(url), user, token
        self.do_hello, self.timeout = hello, timeout
        self.options = dict(subprotocols=[PROTOCOL], compression=None, open_timeout=timeout,
                            max_size=2**24)
        self.options.update(ws_options)
        self.client = None

    async def open(self):
        ws = await websockets.connect(self.url, **self.options)
        self.client = Client(ws)
        self.client._start()
        if self.do_hello:
            try:
                await self.client.hello(self.user, self.token, self.timeout)
            except BaseException:
                await self.client.close()
                raise
        return self.client

    def __await__(self):
        return self.open().__await__()

    async def __aenter__(self):
        return await self.open()

    async def __aexit__(self, *exc):
        if self.client:
            await self.client.close()
