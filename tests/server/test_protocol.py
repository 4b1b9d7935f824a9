"""test_protocol — steer.v1 as docs/protocol.md states it, driven with the Python client library
(clients/python/steer_client.py) against a real `steer serve`. Prints TAP; exits non-zero on failure.

What it checks: hello/welcome, the error codes a client can provoke, the three modes, the two
formats, that credit is honoured exactly, stop/stopped, frame ids, and /healthz, /metrics and 404.
Waits are generous timeouts or "nothing more arrives within a while"; no speed is asserted.
"""
import asyncio
import subprocess
import time
import traceback

import steer_harness as h
from steer_client import Frame, ServerError, connect

QUIET_S = 1.0  # how long "nothing more arrives" is watched
T = 30         # generous timeout for anything that should come


async def next_msg(c, timeout=T):
    return await c.recv(timeout)


async def quiet(c, seconds=QUIET_S):
    """Every message that arrives within seconds (the test expects none, usually)."""
    got = []
    loop = asyncio.get_running_loop()
    end = loop.time() + seconds
    while True:
        left = end - loop.time()
        if left <= 0:
            return got
        try:
            got.append(await c.recv(left))
        except asyncio.TimeoutError:
            return got


async def frames(c, n, timeout=T):
    """n frames in order; fails (raises) on any other message."""
    out = []
    for _ in range(n):
        m = await c.recv(timeout)
        if not isinstance(m, Frame):
            raise AssertionError(f"expected a frame, got {m!r}")
        out.append(m)
    return out


def is_error(m, code=None):
    return isinstance(m, dict) and m.get("t") == "error" and (code is None or m.get("code") == code)


async def expect_error(tap, c, msg, code, what, field=None, ref=None, raw=False):
    """Sends msg (a dict, or bytes when raw) and checks the next message is `error` with code."""
    if raw:
        await c.send_raw(msg)
    else:
        await c.send(msg)
    m = await next_msg(c)
    ok = is_error(m, code) and isinstance(m.get("msg"), str)
    if ok and field is not None:
        ok = f"'{field}'" in m["msg"] or field in m["msg"]
    if ok and ref is not None:
        ok = m.get("ref") == ref
    return tap.ok(ok, what, f"sent {msg!r}\nwant error {code}" +
                  (f" naming '{field}'" if field else "") + (f" ref {ref}" if ref is not None else "") +
                  f"\ngot {m!r}")


def mean_abs_diff(a, b):
    return sum(abs(x - y) for x, y in zip(a, b)) / len(a)


# ---- tests ----------------------------------------------------------------------------------

async def test_welcome(tap, srv):
    async with connect(srv.ws_url, user="ada") as c:
        w = c.welcome
        tap.eq((w.get("t"), w.get("protocol"), w.get("server"), w.get("user")),
               ("welcome", "steer.v1", "steer", "ada"), "welcome: t, protocol, server, user")
        tap.ok(isinstance(w.get("session"), int) and w["session"] > 0, "welcome: session is a uint",
               w.get("session"))
        model = w.get("model") or {}
        ints = all(isinstance(model.get(k), int) for k in
                   ("version", "width", "height", "channels", "z_dim", "classes"))
        tap.ok(ints and isinstance(model.get("name"), str) and model["width"] > 0 and
               model["height"] > 0 and model["channels"] in (1, 3) and model["z_dim"] > 0 and
               model["classes"] >= 0, "welcome: model fields", model)
        lim = w.get("limits") or {}
        tap.eq({k: lim.get(k) for k in ("max_message", "max_streams", "max_credit", "queue_frames")},
               {"max_message": 65536, "max_streams": 8, "max_credit": 1024, "queue_frames": 16},
               "welcome: default limits")
        tap.ok(isinstance(lim.get("history"), int) and lim["history"] > 0, "welcome: limits.history",
               lim)
        async with connect(srv.ws_url) as anon:
            s = anon.welcome.get("session")
            tap.eq(anon.welcome.get("user"), f"anon-{s}", "hello without user: user is anon-<session>")
            tap.ok(s != w.get("session"), "two connections get two sessions", (s, w.get("session")))


async def test_no_hello(tap, srv):
    async with connect(srv.ws_url, hello=False) as c:
        await expect_error(tap, c, {"t": "stream", "id": 1, "n": 1}, "no_hello", "stream before hello")
        await expect_error(tap, c, {"t": "credit", "id": 1, "n": 1}, "no_hello", "credit before hello")
        await expect_error(tap, c, {"t": "stop", "id": 1}, "no_hello", "stop before hello")
        w = await c.hello("bob")
        tap.eq(w.get("user"), "bob", "hello after no_hello errors: welcome")
        await c.stream(1, n=1)
        f = await c.next_frame(T)
        tap.eq(f.stream, 1, "the session then serves frames")


async def test_already_hello(tap, srv):
    async with connect(srv.ws_url, user="carol") as c:
        await expect_error(tap, c, {"t": "hello", "user": "carol"}, "already_hello", "second hello")
        await expect_error(tap, c, {"t": "hello"}, "already_hello", "third hello, no user")
        await c.stream(7, n=1)
        f = await c.next_frame(T)
        tap.eq(f.stream, 7, "the session still serves frames after already_hello")


async def test_types(tap, srv):
    async with connect(srv.ws_url) as c:
        await c.send({"t": "crdit", "id": 1})
        m = await next_msg(c)
        tap.ok(is_error(m, "unknown_type") and "crdit" in m.get("msg", ""),
               "unknown_type names the type", m)
        await expect_error(tap, c, {"id": 1}, "bad_type", "no t: bad_type")
        await expect_error(tap, c, {"t": 5}, "bad_type", "t an int: bad_type")
        await expect_error(tap, c, {"t": b"stream"}, "bad_type", "t bin: bad_type")
        await expect_error(tap, c, {"t": "feedback", "frame": 1}, "bad_field", "feedback without an id")
        await expect_error(tap, c, {"t": "job"}, "bad_field", "job without an op: bad_field")
        await expect_error(tap, c, {"t": "job", "op": "list"}, "unauthorized",
                           "job from a session without the admin token: unauthorized")
        await expect_error(tap, c, {"t": "HELLO"}, "unknown_type", "types are case-sensitive")


async def test_bad_field(tap, srv):
    async with connect(srv.ws_url, hello=False) as c:
        await expect_error(tap, c, {"t": "hello", "user": "a b"}, "bad_field", "hello: user with a space",
                           field="user")
        await expect_error(tap, c, {"t": "hello", "user": ""}, "bad_field", "hello: empty user",
                           field="user")
        await expect_error(tap, c, {"t": "hello", "user": "u" * 65}, "bad_field",
                           "hello: 65-byte user", field="user")
        await expect_error(tap, c, {"t": "hello", "user": 5}, "bad_field", "hello: user an int",
                           field="user")
        await expect_error(tap, c, {"t": "hello", "token": ["x"]}, "bad_field", "hello: token an array",
                           field="token")
        await expect_error(tap, c, {"t": "hello", "token": "x" * 257}, "bad_field",
                           "hello: 257-byte token", field="token")
        w = await c.hello("u" * 64)
        tap.eq(w.get("user"), "u" * 64, "hello: a 64-byte user of every allowed kind of char is fine")
        classes = w["model"]["classes"]
        cases = [
            ({"t": "stream"}, "id", None, "stream: id missing"),
            ({"t": "stream", "id": "1"}, "id", None, "stream: id a string"),
            ({"t": "stream", "id": -1}, "id", None, "stream: id negative"),
            ({"t": "stream", "id": 2**32}, "id", None, "stream: id 2^32"),
            ({"t": "stream", "id": 1.0}, "id", None, "stream: id a float"),
            ({"t": "stream", "id": 1, "mode": "zoom"}, "mode", 1, "stream: unknown mode"),
            ({"t": "stream", "id": 1, "mode": 1}, "mode", 1, "stream: mode an int"),
            ({"t": "stream", "id": 1, "format": "jpeg"}, "format", 1, "stream: unknown format"),
            ({"t": "stream", "id": 1, "format": None}, "format", 1, "stream: format nil"),
            ({"t": "stream", "id": 1, "n": 1025}, "n", 1, "stream: n past max_credit"),
            ({"t": "stream", "id": 1, "n": -1}, "n", 1, "stream: n negative"),
            ({"t": "stream", "id": 1, "fps": 241}, "fps", 1, "stream: fps 241"),
            ({"t": "stream", "id": 1, "fps": -0.5}, "fps", 1, "stream: fps negative"),
            ({"t": "stream", "id": 1, "fps": float("nan")}, "fps", 1, "stream: fps NaN"),
            ({"t": "stream", "id": 1, "fps": "fast"}, "fps", 1, "stream: fps a string"),
            ({"t": "stream", "id": 1, "class": classes if classes else 1}, "class", 1,
             "stream: class = classes"),
            ({"t": "stream", "id": 1, "class": -2}, "class", 1, "stream: class -2"),
            ({"t": "stream", "id": 1, "class": 1.5}, "class", 1, "stream: class a float"),
            ({"t": "stream", "id": 1, "seed": 2**53}, "seed", 1, "stream: seed 2^53"),
            ({"t": "stream", "id": 1, "seed": -1}, "seed", 1, "stream: seed negative"),
            ({"t": "stream", "id": 1, "seed": "42"}, "seed", 1, "stream: seed a string"),
            ({"t": "stream", "id": 1, "step": 0}, "step", 1, "stream: step 0"),
            ({"t": "stream", "id": 1, "step": 1.5}, "step", 1, "stream: step 1.5"),
            ({"t": "credit", "id": 1}, "n", 1, "credit: n missing"),
            ({"t": "credit", "id": 1, "n": 0}, "n", 1, "credit: n 0"),
            ({"t": "credit", "id": 1, "n": 1025}, "n", 1, "credit: n past max_credit"),
            ({"t": "credit", "id": 1, "n": 2**64 - 1}, "n", 1, "credit: n 2^64-1"),
            ({"t": "credit", "id": 1, "n": -5}, "n", 1, "credit: n negative"),
            ({"t": "credit", "n": 1}, "id", None, "credit: id missing"),
            ({"t": "stop"}, "id", None, "stop: id missing"),
            ({"t": "stop", "id": [1]}, "id", None, "stop: id an array"),
        ]
        for msg, field, ref, what in cases:
            await expect_error(tap, c, msg, "bad_field", what, field=field, ref=ref)
        # Floats where a float is asked for, and integers there too, are accepted: stream opens.
        await c.stream(1, fps=240, step=1, n=1, seed=2**53 - 1, cls=classes - 1 if classes else None)
        f = await next_msg(c)
        tap.ok(isinstance(f, Frame) and f.stream == 1, "stream at the edges of every range opens", f)
        tap.eq(await c.stop(1), 1, "and stops with sent 1")


async def test_stream_errors(tap, srv):
    async with connect(srv.ws_url) as c:
        lim = c.welcome["limits"]
        await expect_error(tap, c, {"t": "credit", "id": 99, "n": 1}, "unknown_stream",
                           "credit on a stream never opened", ref=99)
        await expect_error(tap, c, {"t": "stop", "id": 99}, "unknown_stream",
                           "stop on a stream never opened", ref=99)
        for i in range(lim["max_streams"]):
            await c.stream(100 + i)
        await expect_error(tap, c, {"t": "stream", "id": 100}, "stream_exists", "stream id in use",
                           ref=100)
        await expect_error(tap, c, {"t": "stream", "id": 500}, "too_many_streams",
                           f"stream number {lim['max_streams'] + 1}", ref=500)
        sents = [await c.stop(100 + i) for i in range(lim["max_streams"])]
        tap.eq(sents, [0] * lim["max_streams"], "streams without credit stop with sent 0")
        await expect_error(tap, c, {"t": "credit", "id": 100, "n": 1}, "unknown_stream",
                           "credit on a stopped stream", ref=100)
        # fps 0.01: one frame at most comes at once, so nearly max_credit stays granted.
        await c.stream(1, n=lim["max_credit"], fps=0.01)
        await c.send({"t": "credit", "id": 1, "n": lim["max_credit"] // 2})
        m = await next_msg(c)
        while isinstance(m, Frame):
            m = await next_msg(c)
        tap.ok(is_error(m, "credit_overflow") and m.get("ref") == 1,
               "credit past max_credit granted: credit_overflow", m)
        sent = await c.stop(1)
        tap.ok(sent <= 2, "and the stream at fps 0.01 sent at most a frame or two", sent)
        await c.stream(1, n=2)
        got = await frames(c, 2)
        tap.eq([f.seq for f in got], [0, 1], "a stopped id can be opened again; seq starts at 0")


async def test_modes(tap, srv):
    async with connect(srv.ws_url) as c:
        model = c.welcome["model"]
        n = 12
        await c.stream(1, mode="gallery", format="raw8", n=n, seed=11)
        gallery = await frames(c, n)
        await c.stream(2, mode="walk", format="raw8", n=n, seed=11)
        walk = await frames(c, n)
        size = model["width"] * model["height"] * model["channels"]
        tap.ok(all(len(f.data) == size and (f.w, f.h, f.c) == (model["width"], model["height"],
                                                                model["channels"])
                   for f in gallery + walk), f"raw8: data is w*h*c = {size} bytes, dims as welcome",
               [(f.w, f.h, f.c, len(f.data)) for f in gallery[:2]])
        tap.ok(all(f.format == "raw8" for f in gallery + walk), "raw8 frames say format raw8")
        dg = [mean_abs_diff(a.data, b.data) for a, b in zip(gallery, gallery[1:])]
        dw = [mean_abs_diff(a.data, b.data) for a, b in zip(walk, walk[1:])]
        mg, mw = sum(dg) / len(dg), sum(dw) / len(dw)
        tap.ok(mw * 3 < mg, "walk: consecutive frames much closer than gallery's",
               f"mean |diff| walk {mw:.2f}, gallery {mg:.2f}")
        tap.ok(min(dw) > 0, "walk: consecutive frames still differ", dw)
        tap.ok(len({f.cls for f in walk}) == 1, "walk: one class along a walk", [f.cls for f in walk])
        tap.ok(all(f.side is None and f.pair is None for f in gallery + walk),
               "gallery and walk frames carry no pair/side")
        await c.stop(1)
        await c.stop(2)

        await c.stream(3, mode="pair", n=6)
        pairs = await frames(c, 6)
        tap.eq([f.side for f in pairs], [0, 1, 0, 1, 0, 1], "pair: sides alternate A, B")
        tap.ok(all(pairs[i].pair == pairs[i].frame and pairs[i + 1].pair == pairs[i].frame
                   for i in (0, 2, 4)), "pair: pair is the A frame's id on both sides",
               [(f.frame, f.pair, f.side) for f in pairs])
        await c.credit(3, 3)
        got = await frames(c, 2)
        rest = await quiet(c)
        tap.ok(len(rest) == 0 and [f.side for f in got] == [0, 1],
               "pair: credit 3 brings one pair; the odd credit waits", rest)
        await c.credit(3, 1)
        got = await frames(c, 2)
        tap.eq([f.side for f in got], [0, 1], "pair: one more credit completes the next pair")
        tap.eq(await c.stop(3), 10, "pair: stopped says 10 sent")


async def test_formats_and_seed(tap, srv):
    async with connect(srv.ws_url) as c:
        model = c.welcome["model"]
        await c.stream(1, format="png", n=4, seed=1234)
        png = await frames(c, 4)
        await c.stream(2, format="raw8", n=4, seed=1234)
        raw = await frames(c, 4)
        await c.stream(3, format="raw8", n=4, seed=1234)
        raw_again = await frames(c, 4)
        await c.stream(4, format="raw8", n=4, seed=4321)
        other = await frames(c, 4)
        tap.ok(all(f.format == "png" and f.data[:8] == b"\x89PNG\r\n\x1a\n" for f in png),
               "png frames are PNG files")
        dims = [(f.w, f.h, f.c, len(f.image())) for f in png]
        w, h, ch = model["width"], model["height"], model["channels"]
        tap.ok(all(d == (w, h, ch, w * h * ch) for d in dims),
               "png frames decode to the model's w, h, c", dims)
        tap.ok([f.data for f in raw] == [f.data for f in raw_again],
               "same seed, same mode: the same raw8 frames")
        tap.ok([f.cls for f in raw] == [f.cls for f in raw_again], "same seed: the same classes")
        tap.ok([f.image() for f in png] == [f.data for f in raw],
               "same seed: PNG pixels equal raw8 pixels")
        tap.ok([f.data for f in other] != [f.data for f in raw], "another seed: other frames")
        for i in (1, 2, 3, 4):
            await c.stop(i)
        if model["classes"]:
            k = model["classes"] - 1
            await c.stream(5, n=5, cls=k)
            got = await frames(c, 5)
            tap.ok(all(f.cls == k for f in got), f"class {k} asked: every frame is class {k}",
                   [f.cls for f in got])
            await c.stream(6, n=20)
            got = await frames(c, 20)
            tap.ok(all(0 <= f.cls < model["classes"] for f in got) and len({f.cls for f in got}) > 1,
                   "class -1: random classes in range", [f.cls for f in got])
        else:
            await c.stream(5, n=3)
            got = await frames(c, 3)
            tap.ok(all(f.cls == -1 for f in got), "unconditional model: class -1")


async def test_credit_exact(tap, srv):
    m0 = srv.metrics()
    async with connect(srv.ws_url) as c:
        await c.stream(1, n=5)
        got = await frames(c, 5)
        extra = await quiet(c)
        tap.ok(not extra, "stream n=5: exactly 5 frames, then nothing", extra)
        tap.eq([f.seq for f in got], [0, 1, 2, 3, 4], "seq 0..4")
        ids = [f.frame for f in got]
        tap.ok(all(a < b for a, b in zip(ids, ids[1:])), "frame ids increase", ids)
        tap.ok(all(f.model_version == c.welcome["model"]["version"] and f.policy_version == 0
                   for f in got), "model_version as welcome, policy_version 0")
        await c.credit(1, 3)
        got += await frames(c, 3)
        extra = await quiet(c)
        tap.ok(not extra, "credit 3: exactly 3 more", extra)
        tap.eq(await c.stop(1), 8, "stopped says sent 8")
        m1 = srv.metrics()
        tap.eq(h.metric(m1, "steer_frames_sent_total") - h.metric(m0, "steer_frames_sent_total"), 8,
               "steer_frames_sent_total grew by the 8 frames received")
        tap.eq(h.metric(m1, "steer_messages_received_total") -
               h.metric(m0, "steer_messages_received_total"), 4,
               "steer_messages_received_total grew by the 4 messages sent")
        tap.ok(h.metric(m1, "steer_frame_bytes_sent_total") - h.metric(m0, "steer_frame_bytes_sent_total")
               >= sum(len(f.data) for f in got), "steer_frame_bytes_sent_total grew by at least the data")


async def test_interleaved(tap, srv):
    async with connect(srv.ws_url) as c:
        want = {1: 3, 2: 4, 3: 5}
        for sid, n in want.items():
            await c.stream(sid, n=n, mode=["gallery", "walk", "pair"][sid - 1], format="raw8")
        # Stream 3 is pair mode: 5 credits give 4 frames until a sixth arrives.
        await c.credit(1, 2)
        await c.credit(3, 1)
        await c.credit(2, 1)
        want = {1: 5, 2: 5, 3: 6}
        got = {1: [], 2: [], 3: []}
        for f in await frames(c, sum(want.values())):
            got.setdefault(f.stream, []).append(f)
        extra = await quiet(c)
        tap.eq({k: len(v) for k, v in got.items()}, want,
               "three streams, interleaved credit: each got exactly its credit")
        tap.ok(not extra, "and nothing more", extra)
        tap.ok(all([f.seq for f in v] == list(range(len(v))) for v in got.values()),
               "seq 0, 1, 2, ... on each stream", {k: [f.seq for f in v] for k, v in got.items()})
        ids = [f.frame for v in got.values() for f in v]
        tap.ok(len(set(ids)) == len(ids), "frame ids unique across streams")
        tap.ok(all(all(a.frame < b.frame for a, b in zip(v, v[1:])) for v in got.values()),
               "frame ids increase within each stream")
        sents = {sid: await c.stop(sid) for sid in (1, 2, 3)}
        tap.eq(sents, want, "stopped.sent per stream matches what was received")


async def test_stop_mid_stream(tap, srv):
    m0 = srv.metrics()
    async with connect(srv.ws_url) as c:
        await c.stream(1, n=1024)
        await frames(c, 5)
        await c.send({"t": "stop", "id": 1})
        before = 5
        while True:
            m = await next_msg(c)
            if isinstance(m, Frame):
                before += 1
                continue
            break
        tap.ok(isinstance(m, dict) and m.get("t") == "stopped" and m.get("id") == 1,
               "stop with credit left: stopped", m)
        tap.eq(m.get("sent"), before, "stopped.sent counts every frame received before it")
        await c.stream(2, n=3)
        after = await frames(c, 3)
        after += await quiet(c)
        tap.ok(all(isinstance(f, Frame) and f.stream == 2 for f in after) and len(after) == 3,
               "after stopped: no frame of the stopped stream", after)
        await c.stop(2)
        m1 = srv.metrics()
        tap.eq(h.metric(m1, "steer_frames_sent_total") - h.metric(m0, "steer_frames_sent_total"),
               before + 3, "steer_frames_sent_total counts exactly the frames received")
        tap.eq(h.metric(m1, "steer_streams"), h.metric(m0, "steer_streams"),
               "steer_streams back where it was")


async def test_two_connections(tap, srv):
    async with connect(srv.ws_url) as a, connect(srv.ws_url) as b:
        await a.stream(1, n=30)
        await b.stream(1, n=30)
        fa, fb = await asyncio.gather(frames(a, 30), frames(b, 30))
        ia, ib = {f.frame for f in fa}, {f.frame for f in fb}
        tap.ok(len(ia) == 30 and len(ib) == 30 and not (ia & ib),
               "two connections, same stream id: frame ids unique across them", ia & ib)
        now_us = time.time() * 1e6
        tap.ok(all(srv.t_launch_us <= i <= now_us for i in ia | ib),
               "frame ids start at the server's start time in microseconds",
               (srv.t_launch_us, min(ia | ib), max(ia | ib), now_us))


async def test_handshake(tap, srv):
    import websockets
    try:
        async with connect(srv.ws_url, subprotocols=None) as c:
            # If the server let the upgrade through, it must at least not serve this connection.
            closed = await c.wait_closed(T)
            tap.ok(False, "handshake without steer.v1 refused", f"connection opened, close {closed}")
    except (websockets.InvalidHandshake, ServerError, websockets.ConnectionClosed) as e:
        tap.ok(True, f"handshake without steer.v1 refused ({type(e).__name__})")
    try:
        async with connect(srv.ws_url, subprotocols=["steer.v0"]):
            tap.ok(False, "handshake with only steer.v0 refused")
    except (websockets.InvalidHandshake, ServerError, websockets.ConnectionClosed) as e:
        tap.ok(True, f"handshake with only steer.v0 refused ({type(e).__name__})")
    m = srv.metrics()
    tap.ok(h.metric(m, "steer_connections_refused_total", reason="protocol") >= 2,
           "steer_connections_refused_total{reason=protocol} counts them",
           {k: v for k, v in m.items() if "refused" in k})


async def test_http(tap, srv):
    status, body = srv.healthz()
    tap.eq(status, 200, "GET /healthz: 200")
    tap.ok(body.get("status") == "ok" and body.get("protocol") == "steer.v1" and
           isinstance(body.get("model"), dict) and isinstance(body["model"].get("version"), int) and
           isinstance(body["model"].get("name"), str) and
           all(isinstance(body.get(k), int) for k in ("connections", "streams", "queue_depth")) and
           isinstance(body.get("uptime_s"), (int, float)), "/healthz fields", body)
    async with connect(srv.ws_url) as c:
        await c.stream(1)
        await c.stream(2)
        await c.send({"t": "job"})  # a round trip, so both streams are open when we look
        await next_msg(c)
        _, body2 = srv.healthz()
        m = srv.metrics()
        tap.ok(body2.get("connections", 0) >= 1 and body2.get("streams", 0) >= 2,
               "/healthz counts this connection and its two streams", body2)
        tap.ok(h.metric(m, "steer_connections", -1) >= 1 and h.metric(m, "steer_sessions", -1) >= 1 and
               h.metric(m, "steer_streams", -1) >= 2, "/metrics gauges count them too",
               {k: m.get(k) for k in ("steer_connections", "steer_sessions", "steer_streams")})
    names = ["steer_connections", "steer_connections_total", "steer_sessions", "steer_streams",
             "steer_frames_sent_total", "steer_frame_bytes_sent_total", "steer_messages_received_total",
             "steer_errors_sent_total", "steer_queue_depth", "steer_frames_queued",
             "steer_frames_in_flight", "steer_loop_lag_seconds", "steer_loop_lag_max_seconds",
             "steer_model_version", "steer_uptime_seconds", "steer_batch_size_count",
             "steer_generation_seconds_count"]
    status, headers, text = srv.get("/metrics")
    m = h.parse_metrics(text.decode())
    tap.ok(status == 200 and headers.get("content-type", "").startswith("text/plain"),
           "GET /metrics: 200 text/plain", (status, headers.get("content-type")))
    missing = [n for n in names if n not in m]
    tap.ok(not missing, "/metrics has every documented series", missing)
    tap.ok(h.metric(m, "steer_batch_size_count") >= 1 and
           any(k.startswith("steer_batch_size_bucket") and 'le="+Inf"' in k for k in m),
           "steer_batch_size is a histogram with samples")
    tap.ok(h.metric(m, "steer_errors_sent_total") > 0, "steer_errors_sent_total counted the errors")
    for path in ("/nope", "/ws2", "/metrics/x"):
        status, _, _ = srv.get(path)
        tap.eq(status, 404, f"GET {path}: 404")


TESTS = [test_welcome, test_no_hello, test_already_hello, test_types, test_bad_field,
         test_stream_errors, test_modes, test_formats_and_seed, test_credit_exact, test_interleaved,
         test_stop_mid_stream, test_two_connections, test_handshake, test_http]


async def main(tap):
    t_launch_us = time.time() * 1e6
    with h.Server("--seed", 1) as srv:
        srv.t_launch_us = t_launch_us
        for test in TESTS:
            try:
                await asyncio.wait_for(test(tap, srv), 40)
            except asyncio.TimeoutError:
                tap.ok(False, f"{test.__name__} finished", "timed out after 40 s")
            except Exception as e:
                tap.ok(False, f"{test.__name__} finished", f"{e!r}\n{traceback.format_exc()}")
            if not srv.running():
                tap.ok(False, "server still running", srv.stderr_tail())
                break
        srv.stop_ok(tap)
    await test_device(tap)


async def test_device(tap):
    """--device: cuda where it cannot be used (no CUDA build, or no GPU) draws on the CPU and says
    why; a word other than auto, cpu or cuda is refused."""
    with h.Server("--device", "cuda", "--policy-pool", "0") as srv:
        async with connect(srv.ws_url) as c:
            await c.stream(1, n=2, format="raw8")
            frames = [await c.next_frame(T) for _ in range(2)]
        log = srv.stderr_tail()
        tap.ok(len(frames) == 2 and all(len(f.data) == 32 * 32 for f in frames),
               "--device cuda here: frames are drawn")
        tap.ok(("drawing frames on the CPU (asked for cuda; " in log and
                ("no CUDA backend" in log or "no usable GPU" in log)) or
               "drawing frames on the GPU" in log,
               "--device cuda: the log says where frames are drawn, and why not on a GPU", log)
        srv.stop_ok(tap)
    out = subprocess.run([h.BIN, "serve", "--device", "tpu"], capture_output=True, text=True,
                         timeout=30)
    tap.ok(out.returncode == 2 and "expected auto, cpu or cuda" in out.stderr,
           "--device tpu: refused with exit 2", out.stderr)


if __name__ == "__main__":
    h.run([main], timeout=110)
