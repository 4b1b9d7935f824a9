"""test_feedback — feedback through a real `steer serve` into its SQLite store: every kind is
acknowledged and stored with the latent, class and versions of the frames it names; a retried id is
acknowledged again and stored once (also after a restart); bad feedback gets an error and stores
nothing; and `kill -9` during a burst of feedback, several rounds, loses no acknowledged id and
stores none twice. The store is read back with Python's sqlite3 and `steer export`. Prints TAP.
"""
import asyncio
import json
import os
import sqlite3
import sys
import subprocess
import tempfile

import steer_harness as h
from steer_client import connect

T = 30


def db_rows(data, sql, args=()):
    with sqlite3.connect(os.path.join(data, "steer.db")) as db:
        return db.execute(sql, args).fetchall()


async def acked(c, ids, timeout=T):
    """Waits for an ack of every id in ids; returns the messages that were not acks."""
    want, other = set(ids), []
    while want:
        m = await c.recv(timeout)
        if isinstance(m, dict) and m.get("t") == "ack":
            want.discard(m["id"])
        elif isinstance(m, dict):
            other.append(m)
    return other


async def frames(c, sid, n, **kw):
    await c.stream(sid, n=n, **kw)
    return [await c.next_frame(T) for _ in range(n)]


async def test_kinds_and_retries(tap, data):
    with h.Server("--data", data) as srv:
        async with connect(srv.ws_url, user="ada") as c:
            fs = await frames(c, 1, 6, mode="pair")
            ids = [f.frame for f in fs]
            await c.feedback("r1", "rate", frame=ids[0], value=-0.5)
            await c.send({"t": "feedback", "id": 42, "kind": "pair", "winner": ids[1], "loser": ids[0]})
            await c.send({"t": "feedback", "id": "p2", "kind": "pair", "winner": ids[2], "loser": ids[3],
                          "tie": True})
            await c.send({"t": "feedback", "id": "c1", "kind": "choose", "chosen": ids[4],
                          "among": ids[2:6]})
            other = await acked(c, ["r1", 42, "p2", "c1"])
            tap.ok(not other, "rate, pair, pair with tie and choose are all acknowledged", other)
            await c.send({"t": "feedback", "id": "r1", "kind": "rate", "frame": ids[0], "value": -0.5})
            other = await acked(c, ["r1"])
            tap.ok(not other, "a retried id is acknowledged again", other)
        rows = db_rows(data, "SELECT client_id, kind, value, tie FROM feedback WHERE user='ada' "
                             "ORDER BY id")
        tap.eq(rows, [("r1", "rate", -0.5, 0), ("42", "pair", None, 0), ("p2", "pair", None, 1),
                      ("c1", "choose", None, 0)], "four rows, the retry stored once")
        fr = db_rows(data, "SELECT f.client_id, ff.role, ff.frame, ff.class, ff.model_version, "
                           "ff.policy_version, length(ff.latent) FROM feedback_frame ff JOIN feedback f "
                           "ON f.id = ff.feedback ORDER BY ff.rowid")
        by = {(r[0], r[1]): r for r in fr}
        tap.ok(by[("r1", "rated")][2] == ids[0] and by[("42", "winner")][2] == ids[1] and
               by[("42", "loser")][2] == ids[0], "each row names its frames in their roles", fr[:4])
        tap.ok(all(r[6] == 128 * 4 for r in fr), "every named frame keeps its 128-float latent")
        tap.ok(all(0 <= r[3] < 10 and r[4] == 1 and r[5] == 0 for r in fr),
               "with its class, model version and policy version")
        tap.eq(sorted(r[1] for r in fr if r[0] == "c1"), ["among", "among", "among", "chosen"],
               "choose stores the chosen frame and the three others")
        frame_class = {f.frame: f.cls for f in fs}
        tap.ok(all(frame_class[r[2]] == r[3] for r in fr), "the stored class is the frame's class")
        srv.stop_ok(tap)
    # A retry after a restart names frames the new server never drew: still acknowledged once.
    with h.Server("--data", data) as srv:
        async with connect(srv.ws_url, user="ada") as c:
            await c.send({"t": "feedback", "id": "c1", "kind": "choose", "chosen": ids[4],
                          "among": ids[2:6]})
            other = await acked(c, ["c1"])
            tap.ok(not other, "a retry after a restart is acknowledged", other)
            await c.send({"t": "feedback", "id": "new", "kind": "rate", "frame": ids[0], "value": 1})
            m = await c.recv(T)
            tap.ok(m.get("t") == "error" and m.get("code") == "unknown_frame",
                   "a new id naming a frame of the old server: unknown_frame", m)
        tap.eq(db_rows(data, "SELECT count(*) FROM feedback WHERE user='ada'")[0][0], 4,
               "still four rows")
        srv.stop_ok(tap)
    # steer export reads the same store.
    out = subprocess.run([h.BIN if os.path.isabs(h.BIN) else os.path.join(h.ROOT, h.BIN), "export",
                          "--data", data, "--format", "trl"], capture_output=True, text=True,
                         cwd=h.ROOT)
    lines = [json.loads(x) for x in out.stdout.splitlines()]
    tap.ok(out.returncode == 0 and len(lines) == 4, "steer export --format trl: one JSON line each",
           out.stderr)
    pair = next(x for x in lines if x["id"] == "42")
    tap.ok(pair["chosen"][0]["frame"] == ids[1] and pair["rejected"][0]["frame"] == ids[0] and
           len(pair["chosen"][0]["latent"]) == 128, "pair: chosen is the winner, rejected the loser",
           {k: v for k, v in pair.items() if k not in ("chosen", "rejected")})
    out = subprocess.run([h.BIN if os.path.isabs(h.BIN) else os.path.join(h.ROOT, h.BIN), "export",
                          "--data", data, "--format", "csv"], capture_output=True, text=True,
                         cwd=h.ROOT)
    tap.ok(out.returncode == 0 and len(out.stdout.splitlines()) == 1 + 1 + 2 + 2 + 4,
           "steer export --format csv: a header and one row per named frame", out.stdout[:200])


async def test_bad_feedback(tap, data):
    with h.Server("--data", data) as srv:
        async with connect(srv.ws_url, user="bob") as c:
            ids = [f.frame for f in await frames(c, 1, 3)]
            bad = [
                ({"t": "feedback", "id": "u1", "kind": "rate", "frame": 12345, "value": 1}, "unknown_frame"),
                ({"t": "feedback", "id": "u2", "kind": "pair", "winner": ids[0], "loser": 777}, "unknown_frame"),
                ({"t": "feedback", "id": "w1", "kind": "rate", "frame": "x", "value": 1}, "bad_field"),
                ({"t": "feedback", "id": "w2", "kind": "rate", "frame": ids[0], "value": 2}, "bad_field"),
                ({"t": "feedback", "id": "w3", "kind": "rate", "frame": ids[0]}, "bad_field"),
                ({"t": "feedback", "id": "w4", "kind": "pair", "winner": ids[0], "loser": ids[0]}, "bad_field"),
                ({"t": "feedback", "id": "w5", "kind": "choose", "chosen": ids[0],
                  "among": list(range(1, 1000))}, "bad_field"),
                ({"t": "feedback", "id": "w6", "kind": "choose", "chosen": ids[0], "among": ids[1:]},
                 "bad_field"),
                ({"t": "feedback", "id": "w7", "kind": "like", "frame": ids[0]}, "bad_field"),
                ({"t": "feedback", "kind": "rate", "frame": ids[0], "value": 1}, "bad_field"),
                ({"t": "feedback", "id": "x" * 65, "kind": "rate", "frame": ids[0], "value": 1}, "bad_field"),
                ({"t": "feedback", "id": "a b", "kind": "rate", "frame": ids[0], "value": 1}, "bad_field"),
                ({"t": "feedback", "id": -3, "kind": "rate", "frame": ids[0], "value": 1}, "bad_field"),
            ]
            codes = []
            for msg, _ in bad:
                await c.send(msg)
                m = await c.recv(T)
                codes.append(m.get("code") if isinstance(m, dict) else m)
            tap.eq(codes, [code for _, code in bad], f"{len(bad)} bad feedbacks get the right errors")
            await c.send({"t": "feedback", "id": "ok", "kind": "rate", "frame": ids[1], "value": 1})
            tap.ok(not await acked(c, ["ok"]), "a good one afterwards is acknowledged")
        tap.eq(db_rows(data, "SELECT client_id FROM feedback WHERE user='bob'"), [("ok",)],
               "bad feedback stored nothing")
        srv.stop_ok(tap)


async def burst_then_kill(srv, data, round_no, n=3000):
    """Sends n feedbacks as fast as possible, kills the server with SIGKILL once some acks came,
    returns the acknowledged ids."""
    got = set()
    async with connect(srv.ws_url, user="crash") as c:
        ids = [f.frame for f in await frames(c, 1, 8)]

        async def sender():
            for i in range(n):
                await c.send({"t": "feedback", "id": f"r{round_no}-{i}", "kind": "rate",
                              "frame": ids[i % 8], "value": 1})

        send_task = asyncio.ensure_future(sender())
        try:
            while True:
                m = await c.recv(T)
                if isinstance(m, dict) and m.get("t") == "ack":
                    got.add(m["id"])
                    if len(got) == 300 + 200 * round_no:
                        srv.kill()  # SIGKILL in the middle of the burst
        except Exception:
            pass
        send_task.cancel()
        await asyncio.gather(send_task, return_exceptions=True)
    return got


async def test_kill9(tap, data):
    for round_no in range(3):
        srv = h.Server("--data", data)
        srv.start()
        try:
            got = await burst_then_kill(srv, data, round_no)
        finally:
            srv.kill()
        tap.ok(len(got) >= 300, f"round {round_no}: {len(got)} acks before SIGKILL")
        rows = dict(db_rows(data, "SELECT client_id, count(*) FROM feedback WHERE user='crash' "
                                  "AND client_id LIKE ? GROUP BY client_id", (f"r{round_no}-%",)))
        missing = [i for i in got if i not in rows]
        tap.ok(not missing, f"round {round_no}: every acknowledged id is stored after the crash",
               missing[:5])
        tap.ok(all(v == 1 for v in rows.values()), f"round {round_no}: none stored twice")
        frames_per = db_rows(data, "SELECT count(*) FROM feedback f JOIN feedback_frame ff ON "
                                   "ff.feedback = f.id WHERE f.client_id LIKE ?", (f"r{round_no}-%",))
        tap.eq(frames_per[0][0], len(rows), f"round {round_no}: no half-written feedback")
    with h.Server("--data", data) as srv:  # and the store opens cleanly after all that
        async with connect(srv.ws_url, user="crash") as c:
            ids = [f.frame for f in await frames(c, 1, 1)]
            await c.send({"t": "feedback", "id": "after", "kind": "rate", "frame": ids[0], "value": 1})
            tap.ok(not await acked(c, ["after"]), "after three crashes the server stores again")
        srv.stop_ok(tap)


async def main():
    tap = h.Tap()
    for test in (test_kinds_and_retries, test_bad_feedback, test_kill9):
        with tempfile.TemporaryDirectory(prefix="steer_fb_") as data:
            try:
                await test(tap, data)
            except Exception as e:  # a crash of the test is a failure, not a silent pass
                tap.ok(False, f"{test.__name__} raised {type(e).__name__}: {e}")
    return tap.done()


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
