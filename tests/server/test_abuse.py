"""test_abuse — a real `steer serve` against clients that misbehave: hundreds of malformed messages,
oversized messages, floods, too many connections, wrong origins and tokens, readers that stall,
clients that vanish, a saturated generator, and SIGTERM with streams open. Prints TAP; exits
non-zero on failure.

Every check is on a value the server reports (a message, a close code, an HTTP status, a /metrics
series); waits are generous timeouts that only keep a broken server from hanging the test.
"""
import asyncio
import random
import tempfile

import msgpack
import websockets

import steer_harness as h
from steer_client import connect, pack

T = 30  # generous timeout for anything that should come


def is_error(m, code=None):
    return isinstance(m, dict) and m.get("t") == "error" and (code is None or m.get("code") == code)


async def serves_frames(c, sid):
    """True if stream sid with one credit brings its frame and stops with sent 1."""
    await c.stream(sid, n=1)
    f = await c.next_frame(T)
    return f.stream == sid and await c.stop(sid) == 1


def malformed_messages(rng):
    """(what, payload) pairs: bytes go as binary messages, str as text messages. None is valid."""
    out = []
    add = out.append
    for i in range(80):
        add((f"random bytes #{i}", bytes(rng.randrange(256) for _ in range(rng.randrange(1, 80)))))
    valid = pack({"t": "stream", "id": 4000000000, "mode": "walk", "format": "raw8", "n": 3,
                  "fps": 12.5, "class": 2, "seed": 2**40, "step": 0.25})
    for cut in range(len(valid)):
        add((f"stream message truncated to {cut} bytes", valid[:cut]))
    for cut in range(1, len(pack({"t": "credit", "id": 1, "n": 1}))):
        add((f"credit message truncated to {cut} bytes", pack({"t": "credit", "id": 1, "n": 1})[:cut]))
    for what, obj in [("nil", None), ("true", True), ("int", 7), ("negative int", -7),
                      ("uint64", 2**64 - 1), ("float", 1.5), ("string", "hello"), ("bin", b"\x81"),
                      ("array", ["t", "hello"]), ("empty array", []), ("array of maps", [{"t": "stop"}]),
                      ("ext", msgpack.ExtType(5, b"abc"))]:
        add((f"not a map: {what}", pack(obj)))
    huge = [("map32 with 2^32-1 pairs", b"\xdf\xff\xff\xff\xff"),
            ("map32 with 2^31 pairs and one key", b"\xdf\x80\x00\x00\x00\xa1t\xa4stop"),
            ("map16 with 65535 pairs", b"\xde\xff\xff\xa1t"),
            ("array32 with 2^32-1 items", b"\xdd\xff\xff\xff\xff"),
            ("array16 with 65535 items", b"\xdc\xff\xff\x00\x00"),
            ("str32 of 2^32-1 bytes", b"\xdb\xff\xff\xff\xffabc"),
            ("str16 of 65535 bytes", b"\xda\xff\xffabc"),
            ("str8 of 200 bytes, 3 there", b"\xd9\xc8abc"),
            ("bin32 of 2^32-1 bytes", b"\xc6\xff\xff\xff\xffabc"),
            ("bin8 of 100 bytes, 1 there", b"\xc4\x64a"),
            ("ext32 of 2^32-1 bytes", b"\xc9\xff\xff\xff\xff\x01abc"),
            ("fixstr of 31 bytes, 2 there", b"\xbfab"),
            ("map: t is a str32 of 2^32-1 bytes", b"\x81\xa1t\xdb\xff\xff\xff\xff"),
            ("map: t is a str8 longer than the rest", b"\x81\xa1t\xd9\x10stop"),
            ("map: value an array32 of 2^31 items", b"\x82\xa1t\xa4stop\xa2id\xdd\x80\x00\x00\x00"),
            ("map: value a map32 of 2^32-1 pairs", b"\x82\xa1t\xa4stop\xa2id\xdf\xff\xff\xff\xff"),
            ("fixmap of 15 pairs, one there", b"\x8f\xa1t\xa4stop"),
            ("fixarray of 15, empty", b"\x9f"),
            ("uint64 cut short", b"\xcf\x00\x01"),
            ("float64 cut short", b"\xcb\x3f\xf0"),
            ("length field cut short", b"\xdb\x00"),
            ("reserved byte 0xc1", b"\xc1"),
            ("map with 0xc1 as a value", b"\x81\xa1t\xc1"),
            ("empty message", b"")]
    for what, data in huge:
        add((what, data))
    for depth in (33, 40, 100, 1000, 20000):
        add((f"arrays nested {depth} deep", b"\x91" * depth + b"\x00"))
    for depth in (33, 64, 5000):
        add((f"maps nested {depth} deep", b"\x81\xa1a" * depth + b"\x00"))
    add(("map nested 40 deep under a known message",
         b"\x83\xa1t\xa4stop\xa2id\x01\xa1x" + b"\x91" * 40 + b"\x00"))
    for extra in (b"\x00", b"\xc0", b"\x81\xa1t\xa4stop", b"\xff" * 10):
        add((f"valid message followed by {len(extra)} more bytes", pack({"t": "job"}) + extra))
    for text in ["hello", '{"t":"hello"}', "", "\x81\xa1t\xa5hello", "x" * 1000]:
        add((f"text message {text[:12]!r}", text))
    keys = [("map with an int key", {1: "stream"}), ("map with a bin key t", {b"t": "hello"}),
            ("map with a nil key", {None: 1}), ("map with an array key", None),
            ("empty map", {}), ("t nil", {"t": None}), ("t true", {"t": True}),
            ("t an int", {"t": 3}), ("t a float", {"t": 3.5}), ("t an array", {"t": ["stream"]}),
            ("t a map", {"t": {"t": "stream"}}), ("t bin", {"t": b"stop"}),
            ("t empty", {"t": ""}), ("t with NUL", {"t": "stop\x00"}), ("t control chars", {"t": "\x01\x02"}),
            ("t 1000 chars", {"t": "s" * 1000}), ("t 'streamx'", {"t": "streamx"}),
            ("t 'stream' plus NUL and more", {"t": "stream\x00zzz"})]
    for what, obj in keys:
        if obj is not None:
            add((what, pack(obj)))
    add(("map with an array key", b"\x81\x91\x01\xa1x"))
    add(("t invalid UTF-8", b"\x81\xa1t\xa3\xff\xfe\xfd"))
    add(("t ext", b"\x81\xa1t\xd4\x01\x02"))
    add(("duplicate key t, credit then stop, no id", b"\x82\xa1t\xa6credit\xa1t\xa4stop"))
    bad_values = [None, True, False, 1.5, -1, -2**63, 2**32, 2**63, 2**64 - 1, "1", b"\x01", [1],
                  {"a": 1}, msgpack.ExtType(1, b"x"), float("inf"), float("-inf"), float("nan"), 1e308]
    for field_msg in [{"t": "stream"}, {"t": "credit", "n": 1}, {"t": "stop"}]:
        for v in bad_values:
            add((f"{field_msg['t']}: id {v!r}", pack(dict(field_msg, id=v))))
    for v in bad_values + [0, 1025, -0.0, 1.0]:  # none is an integer in 1..max_credit
        add((f"credit: n {v!r}", pack({"t": "credit", "id": 1, "n": v})))
    for field, vals in [("mode", [None, 1, "", "walkx", "WALK", "x" * 100, b"walk"]),
                        ("format", [None, 0, "", "PNG", "jpeg", "raw16", "r" * 100]),
                        ("n", [-1, 1025, 2**64 - 1, "3", 1.0, None, -2**63]),
                        ("fps", [-1, 240.5, 1e308, float("inf"), float("nan"), "30", None, [30]]),
                        ("class", [-2, 10, 2**31, -2**31 - 1, 2**64 - 1, 1.5, "1", None]),
                        ("seed", [-1, 2**53, 2**64 - 1, 1.5, "7", None, [7]]),
                        ("step", [0, -0.1, 1.0001, 2, float("nan"), float("inf"), "0.1", None])]:
        for v in vals:
            add((f"stream: {field} {v!r}", pack({"t": "stream", "id": 1, field: v})))
    for v in [None, 5, b"ada", "", "a b", "x" * 65, "ä", "a\x00b", ["ada"]]:
        add((f"hello after hello: user {v!r}", pack({"t": "hello", "user": v})))
    return out


async def test_malformed(tap):
    rng = random.Random(20241128)
    msgs = malformed_messages(rng)
    with h.Server() as srv:
        m0 = srv.metrics()
        async with connect(srv.ws_url, hello=False) as c:
            # Before hello, broken messages are answered too (with some error).
            for what, data in msgs[:40]:
                await c.send_raw(data)
            replies = [await c.recv(T) for _ in range(40)]
            tap.ok(all(is_error(m) for m in replies), "40 malformed messages before hello: 40 errors",
                   [m for m in replies if not is_error(m)][:3])
            await c.hello("mallory")
            tap.ok(await serves_frames(c, 1), "after them, hello works and frames come")
        async with connect(srv.ws_url, user="mallory") as c:
            bad = []
            for i, (what, data) in enumerate(msgs):
                await c.send_raw(data)
                m = await c.recv(T)
                if not is_error(m) or not isinstance(m.get("msg"), str):
                    bad.append((what, data[:40], m))
                if i % 100 == 99 and not await serves_frames(c, 2):
                    bad.append((f"frames after message {i}", b"", None))
            tap.ok(len(msgs) >= 300, f"{len(msgs)} malformed messages made")
            tap.ok(not bad, f"each of {len(msgs)} malformed messages answered with an error",
                   "\n".join(f"{w}: sent {d!r}, got {m!r}" for w, d, m in bad[:10]))
            text_codes = {m.get("code") for m in [await _reply(c, "hi"), await _reply(c, b"\xc1")]}
            tap.eq(text_codes, {"bad_message"}, "text message and byte 0xc1: bad_message")
            m = await _reply(c, b"\xdf\xff\xff\xff\xff")
            tap.ok(is_error(m, "bad_message"), "map32 declaring 2^32-1 pairs: bad_message", m)
            m = await _reply(c, pack({"t": "credit", "id": 1, "n": -1}))
            tap.ok(is_error(m, "bad_field"), "negative credit: bad_field", m)
            tap.ok(await serves_frames(c, 3), "the connection still serves frames after all of them")
        m1 = srv.metrics()
        sent_errors = h.metric(m1, "steer_errors_sent_total") - h.metric(m0, "steer_errors_sent_total")
        tap.ok(sent_errors >= len(msgs) + 40, "steer_errors_sent_total counted them",
               f"{sent_errors} < {len(msgs) + 40}")
        tap.ok(srv.running(), "server alive after the malformed messages", srv.stderr_tail())
        srv.stop_ok(tap)


async def _reply(c, data):
    await c.send_raw(data)
    return await c.recv(T)


async def test_max_message(tap):
    with h.Server("--max-message", 4096) as srv:
        async with connect(srv.ws_url) as c:
            tap.eq(c.welcome["limits"]["max_message"], 4096, "welcome: limits.max_message 4096")
            m = await _reply(c, pack({"t": "job", "pad": "x" * 4000}))
            tap.ok(is_error(m, "bad_field"), "a 4 KB message under the limit is read (and answered)", m)
            await c.send_raw(pack({"t": "job", "pad": "x" * 5000}))
            code = await c.wait_closed(T)
            tap.eq(code, 1009, "a 5 KB message: close 1009")
        async with connect(srv.ws_url) as c:
            # Three fragments of 2000 bytes: each is small, the message they make is not.
            try:
                await c.ws.send([b"\x00" * 2000 for _ in range(3)])
            except websockets.ConnectionClosed:
                pass
            code = await c.wait_closed(T)
            tap.eq(code, 1009, "a 6 KB message in three 2 KB fragments: close 1009")
        raw = h.RawWS(srv.host, srv.port)
        raw.send({"t": "hello"})
        raw.recv()
        raw.send_frame(2, b"\x00" * 3000, fin=False)
        raw.send_frame(0, b"\x00" * 3000, fin=True)
        try:
            while True:
                raw.recv()
        except ConnectionError as e:
            tap.ok("1009" in str(e), "raw client, two 3 KB fragments: close 1009", e)
        raw.close()
        async with connect(srv.ws_url) as c:
            tap.ok(await serves_frames(c, 1), "others are still served")
        m = srv.metrics()
        tap.ok(h.metric(m, "steer_connections_closed_total", code="1009") >= 3,
               "steer_connections_closed_total{code=1009} counts them",
               {k: v for k, v in m.items() if "closed" in k})
        srv.stop_ok(tap)


async def test_rate_flood(tap):
    with h.Server("--max-rate", 50) as srv:
        async with connect(srv.ws_url) as c:
            tap.ok(await serves_frames(c, 1), "a connection under the rate is served")
            sent = 0
            try:
                for _ in range(3000):
                    await c.send({"t": "zzz"})
                    sent += 1
            except websockets.ConnectionClosed:
                pass
            code = await c.wait_closed(T)
            tap.eq(code, 1008, f"a flood of {sent} messages past --max-rate 50: close 1008")
        async with connect(srv.ws_url) as c:
            tap.ok(await serves_frames(c, 1), "a new connection is served afterwards")
        m = srv.metrics()
        tap.ok(h.metric(m, "steer_connections_closed_total", code="1008") >= 1,
               "steer_connections_closed_total{code=1008} counts it",
               {k: v for k, v in m.items() if "closed" in k})
        srv.stop_ok(tap)


async def library_refusal(url, **options):
    """What the websockets library makes of a refused handshake: the HTTP status, or the error."""
    try:
        c = await connect(url, **options)
    except websockets.InvalidStatusCode as e:
        return e.status_code
    except websockets.InvalidHandshake as e:
        return f"{type(e).__name__}: {e} ({e.__cause__})"
    await c.close()
    return "accepted"


def raw_refusal(srv, origin=None):
    """(HTTP status, body) of a handshake on a plain socket."""
    r = h.RawWS(srv.host, srv.port, origin=origin)
    try:
        r.sock.settimeout(T)
        body = r.buf
        while True:
            chunk = r.sock.recv(4096)
            if not chunk:
                break
            body += chunk
            if r.status == 101:
                break
        return r.status, body
    finally:
        r.close()


async def test_max_connections(tap):
    with h.Server("--max-connections", 3) as srv:
        clients = [await connect(srv.ws_url) for _ in range(3)]
        status, body = raw_refusal(srv)
        tap.ok(status == 503 and b"connections" in body, "connection 4 of 3: handshake refused with "
               "HTTP 503 and a plain-text reason", (status, body))
        got = await library_refusal(srv.ws_url)
        tap.eq(got, 503, "connection 4 of 3: the websockets library sees HTTP 503")
        status, _ = srv.healthz()
        tap.eq(status, 200, "/healthz still answers at the connection limit")
        tap.ok(await serves_frames(clients[0], 1), "the three admitted connections are served")
        await clients.pop().close()
        c = None
        for _ in range(50):
            try:
                c = await connect(srv.ws_url)
                break
            except websockets.InvalidHandshake:
                await asyncio.sleep(0.2)
        tap.ok(c is not None and await serves_frames(c, 1),
               "after one closes, a new connection is admitted and served")
        if c:
            clients.append(c)
        m = srv.metrics()
        tap.ok(h.metric(m, "steer_connections_refused_total", reason="limit") >= 2,
               "steer_connections_refused_total{reason=limit} counts the refusals",
               {k: v for k, v in m.items() if "refused" in k})
        for c in clients:
            await c.close()
        srv.stop_ok(tap)


async def test_origin(tap):
    with h.Server("--origin", "http://good.example,http://also.example:8080") as srv:
        for origin in ("http://evil.example", "http://good.example.evil", "https://good.example"):
            status, body = raw_refusal(srv, origin)
            tap.eq(status, 403, f"Origin {origin}: HTTP 403")
        got = await library_refusal(srv.ws_url, origin="http://evil.example")
        tap.eq(got, 403, "wrong Origin: the websockets library sees HTTP 403")
        for origin in ("http://good.example", "http://also.example:8080"):
            async with connect(srv.ws_url, origin=origin) as c:
                tap.ok(await serves_frames(c, 1), f"Origin {origin}: welcome and frames")
        m = srv.metrics()
        tap.ok(h.metric(m, "steer_connections_refused_total", reason="origin") >= 4,
               "steer_connections_refused_total{reason=origin} counts them",
               {k: v for k, v in m.items() if "refused" in k})
        srv.stop_ok(tap)


async def test_token(tap):
    with tempfile.NamedTemporaryFile("w", suffix=".token") as f:
        f.write("s3cret-Token_42")
        f.flush()
        with h.Server("--token-file", f.name) as srv:
            for token, what in (("wrong", "wrong token"), (None, "no token"), ("", "empty token"),
                                ("s3cret-Token_4", "a prefix of the token"),
                                ("s3cret-Token_421", "the token plus a byte")):
                c = await connect(srv.ws_url, hello=False)
                msg = {"t": "hello"} if token is None else {"t": "hello", "token": token}
                await c.send(msg)
                m = await c.recv(T)
                tap.ok(is_error(m, "unauthorized"), f"{what}: error unauthorized", m)
                tap.eq(await c.wait_closed(T), 1008, f"{what}: then close 1008")
            c = await connect(srv.ws_url, hello=False)
            await c.send({"t": "stream", "id": 1, "n": 1})
            m = await c.recv(T)
            tap.ok(is_error(m, "no_hello"), "stream before hello with a token server: no_hello", m)
            await c.close()
            async with connect(srv.ws_url, token="s3cret-Token_42", user="tok") as c:
                tap.ok(await serves_frames(c, 1), "the right token: welcome and frames")
            srv.stop_ok(tap)


async def stall_watch(srv, state, stop_event):
    """Samples /metrics until stop_event; keeps the largest frames_queued and queued + in_flight."""
    loop = asyncio.get_running_loop()
    while not stop_event.is_set():
        m = await loop.run_in_executor(None, srv.metrics)
        q = h.metric(m, "steer_frames_queued")
        state["max_queued"] = max(state["max_queued"], q)
        state["max_alive"] = max(state["max_alive"], q + h.metric(m, "steer_frames_in_flight"))
        state["last"] = m
        await asyncio.sleep(0.1)


async def test_stalled_and_disconnect(tap):
    qf, stalled, streams = 4, 3, 8
    with h.Server("--queue-frames", qf) as srv:
        m0 = srv.metrics()
        raws = []
        for i in range(stalled):
            r = h.RawWS(srv.host, srv.port, rcvbuf=4096)
            r.send({"t": "hello", "user": f"stalled{i}"})
            w = r.recv()
            tap.ok(w.get("t") == "welcome" and w["limits"]["queue_frames"] == qf,
                   f"stalled client {i}: welcome, queue_frames {qf}", w)
            for s in range(streams):
                r.send({"t": "stream", "id": s, "n": 1024, "format": "raw8"})
            raws.append(r)
        granted = stalled * streams * 1024
        state = {"max_queued": 0, "max_alive": 0}
        stop_event = asyncio.Event()
        watcher = asyncio.ensure_future(stall_watch(srv, state, stop_event))
        # Stalled: the count of frames sent stops moving while most credit is unspent.
        loop = asyncio.get_running_loop()
        history = []
        end = loop.time() + 60
        while loop.time() < end:
            m = await loop.run_in_executor(None, srv.metrics)
            history.append(h.metric(m, "steer_frames_sent_total"))
            if len(history) >= 10 and len(set(history[-10:])) == 1:
                break
            await asyncio.sleep(0.2)
        sent = history[-1] - h.metric(m0, "steer_frames_sent_total")
        tap.ok(len(set(history[-10:])) == 1 and sent < granted,
               f"readers that stop reading stall the server's sending ({sent:.0f} of {granted} sent)",
               history[-10:])
        async with connect(srv.ws_url, user="reader") as c:
            await c.stream(1, n=50, format="raw8")
            got = [await c.next_frame(T) for _ in range(50)]
            tap.ok(len(got) == 50 and all(f.stream == 1 for f in got),
                   "another client still gets its 50 frames while three readers stall")
            m = srv.metrics()
        stop_event.set()
        await watcher
        bound = (stalled + 1) * (qf + 1)  # per session: queue_frames, plus the one being written
        tap.ok(state["max_queued"] <= bound,
               f"steer_frames_queued stays within ~--queue-frames per session (<= {bound})",
               f"max steer_frames_queued {state['max_queued']}")
        tap.ok(state["max_alive"] <= bound,
               f"frames queued + in flight stay within ~--queue-frames per session (<= {bound})",
               f"max queued + in_flight {state['max_alive']}")
        tap.diag(f"stalled: max frames_queued {state['max_queued']:.0f}, "
                 f"queued+in_flight {state['max_alive']:.0f}")
        queued_before = h.metric(state["last"], "steer_frames_queued")
        for r in raws:
            r.close()  # unread data in the receive buffer: the kernel resets the connection

        def back_down():
            m = srv.metrics()
            return m if (h.metric(m, "steer_sessions") == 0 and h.metric(m, "steer_streams") == 0 and
                         h.metric(m, "steer_connections") == 0 and
                         h.metric(m, "steer_frames_queued") == 0) else None
        m2 = await h.poll(back_down, T)
        tap.ok(m2 is not None, "stalled clients gone: sessions, streams, connections, queued back to 0",
               {k: v for k, v in srv.metrics().items()
                if k in ("steer_sessions", "steer_streams", "steer_connections", "steer_frames_queued")})
        if m2 is not None:
            dropped = h.metric(m2, "steer_frames_dropped_total", reason="disconnect") - \
                h.metric(m0, "steer_frames_dropped_total", reason="disconnect")
            tap.ok(dropped >= min(queued_before, 1),
                   "frames drawn for them and never sent are counted as dropped (disconnect)",
                   f"dropped {dropped}, queued before the disconnect {queued_before}")

        # Clients with a clean library disconnect mid-stream, while reading.
        m0 = srv.metrics()
        clients = [await connect(srv.ws_url, user=f"leaver{i}") for i in range(5)]
        for c in clients:
            for s in range(3):
                await c.stream(s, n=1024)
        for c in clients:
            await c.next_frame(T)
        m = srv.metrics()
        tap.ok(h.metric(m, "steer_sessions") == 5 and h.metric(m, "steer_streams") == 15,
               "five clients with three streams each: steer_sessions 5, steer_streams 15",
               {k: m.get(k) for k in ("steer_sessions", "steer_streams")})
        for i, c in enumerate(clients):
            if i % 2:
                c.ws.transport.abort()  # vanishes without a close frame
            await c.close()
        m2 = await h.poll(back_down, T)
        tap.ok(m2 is not None, "clients that leave mid-stream free their sessions and streams",
               {k: v for k, v in srv.metrics().items()
                if k in ("steer_sessions", "steer_streams", "steer_connections", "steer_frames_queued")})
        tap.ok(srv.running(), "server alive", srv.stderr_tail())
        srv.stop_ok(tap)


async def test_healthz_saturated(tap):
    with h.Server() as srv:
        n_clients = 50
        clients = [await connect(srv.ws_url, user=f"load{i}") for i in range(n_clients)]
        counts = [0] * n_clients

        async def read(i, c):
            try:
                while True:
                    await c.next_frame()
                    counts[i] += 1
            except (websockets.ConnectionClosed, asyncio.CancelledError):
                pass
        for c in clients:
            await c.stream(1, n=1024)
        readers = [asyncio.ensure_future(read(i, c)) for i, c in enumerate(clients)]
        loop = asyncio.get_running_loop()
        answers = []
        # At least 15 answers, and on until frames flow too (the server first builds its
        # generator's primitives for every batch size, which takes seconds under ASan).
        deadline = loop.time() + 4 * T
        while (len(answers) < 15 or sum(counts) == 0) and loop.time() < deadline:
            answers.append(await loop.run_in_executor(None, srv.healthz))
            await asyncio.sleep(0.1)
        m = srv.metrics()
        tap.ok(all(s == 200 and b.get("status") == "ok" for s, b in answers),
               f"/healthz answers 200 ok {len(answers)} times with {n_clients} clients streaming",
               [a for a in answers if a[0] != 200][:2])
        tap.ok(max(b.get("connections", 0) for _, b in answers) >= n_clients,
               f"/healthz counts the {n_clients} connections", answers[-1][1])
        tap.ok(max(b.get("queue_depth", 0) for _, b in answers) > 0,
               "generation was saturated: /healthz saw a queue_depth > 0",
               [b.get("queue_depth") for _, b in answers])
        tap.ok(sum(counts) > 0 and h.metric(m, "steer_frames_sent_total") >= sum(counts),
               "frames flowed meanwhile", sum(counts))
        for r in readers:
            r.cancel()
        await asyncio.gather(*readers, return_exceptions=True)
        await asyncio.gather(*(c.close() for c in clients), return_exceptions=True)
        srv.stop_ok(tap)


async def test_sigterm(tap):
    srv = h.Server().start()
    try:
        clients = [await connect(srv.ws_url, user=f"term{i}") for i in range(4)]
        for c in clients:
            await c.stream(1, n=1024)
            await c.stream(2, n=1024, mode="walk")
        for c in clients:
            await c.next_frame(T)
        srv.signal()

        async def until_closed(c):
            while True:
                try:
                    await c.recv(T)
                except websockets.ConnectionClosed:
                    return c.close_code
        codes = await asyncio.gather(*(until_closed(c) for c in clients))
        tap.eq(codes, [1001] * len(clients), "SIGTERM with streams open: every client sees close 1001")
        rc = await asyncio.get_running_loop().run_in_executor(None, srv.wait, T)
        tap.eq(rc, 0, "SIGTERM with streams open: exit status 0")
    finally:
        srv.kill()


async def test_idle_and_ping(tap):
    with h.Server("--idle-timeout", 1) as srv:
        async with connect(srv.ws_url, ping_interval=None) as c:
            code = await c.wait_closed(T)
            tap.eq(code, 1001, "--idle-timeout 1: a silent client is closed with 1001")
        m = srv.metrics()
        tap.ok(h.metric(m, "steer_connections_closed_total", code="1001") >= 1,
               "steer_connections_closed_total{code=1001} counts it",
               {k: v for k, v in m.items() if "closed" in k})
        srv.stop_ok(tap)
    with h.Server("--ping-interval", 1) as srv:
        # A peer that never answers pings: a raw socket that says hello and then nothing.
        r = h.RawWS(srv.host, srv.port)
        r.send({"t": "hello"})
        gone = await h.poll(lambda: h.metric(srv.metrics(), "steer_connections", -1) == 0, T)
        tap.ok(gone, "--ping-interval 1: a peer that never pongs is dropped",
               h.metric(srv.metrics(), "steer_connections", -1))
        r.close()
        async with connect(srv.ws_url) as c:  # the library answers pings
            await c.stream(1, n=1, fps=0.5)
            await c.next_frame(T)
            await c.credit(1, 1)
            await c.next_frame(T)
            await c.credit(1, 1)
            await c.next_frame(T)
            tap.ok(c.close_code is None, "a peer that pongs stays connected across several pings")
        srv.stop_ok(tap)


TESTS = [test_malformed, test_max_message, test_rate_flood, test_max_connections, test_origin,
         test_token, test_stalled_and_disconnect, test_healthz_saturated, test_sigterm,
         test_idle_and_ping]

if __name__ == "__main__":
    h.run(TESTS, timeout=120)  # per test; test_idle_and_ping starts two servers and waits on pings
