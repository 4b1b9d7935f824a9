"""bench/feedback.py — acknowledged feedback per second through a real `steer serve` and its SQLite
store (WAL, synchronous=FULL, group commit), and the latency from a feedback sent to its `ack`;
first, on the idle server, the latency from a rating sent to the `policy` message of the updated
policy that draws the user's next frames (issue 4: <= 50 ms).

    /usr/bin/python3 bench/feedback.py URL [--connections 16] [--window 16] [--seconds 5]

Each connection draws 8 frames, then keeps `window` feedbacks (rate, each with a fresh id) in flight:
a new one goes out for every ack. Then it waits until every user's policy has learned from all of
its acked feedback (learn_catchup_s: the learning thread's backlog after the flood). Prints
`name value` lines for bench/run.sh.
"""
import argparse
import asyncio
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "clients", "python"))
from steer_client import connect  # noqa: E402


async def one(url, k, window, seconds, lat, counts, catchup, last_ack):
    async with connect(url, user=f"bench{k}") as c:
        await c.stream(1, n=8)
        frames = [(await c.next_frame(30)).frame for _ in range(8)]
        sent_at, i = {}, 0

        async def send_one():
            nonlocal i
            fid = f"{k}-{i}"
            sent_at[fid] = time.perf_counter()
            await c.send({"t": "feedback", "id": fid, "kind": "rate", "frame": frames[i % 8],
                          "value": 1.0})
            i += 1

        for _ in range(window):
            await send_one()
        end = time.perf_counter() + seconds
        while True:
            m = await c.recv(30)
            if not isinstance(m, dict):
                continue
            if m.get("t") != "ack":
                raise SystemExit(f"bench: unexpected reply {m}")
            now = time.perf_counter()
            lat.append(now - sent_at.pop(m["id"]))
            counts[k] += 1
            if now < end:
                await send_one()
            elif not sent_at:
                break
        last_ack.append(time.perf_counter())
        # the learning thread's backlog: until this user's policy learned from every acked event
        await c.wait_policy(counts[k], 900)
        catchup.append(time.perf_counter() - last_ack[-1])


async def policy_latency(url, n=40):
    """Sequential ratings by one user; the time from each send to its new policy's message."""
    out = []
    async with connect(url, user="bench-latency") as c:
        await c.stream(1, n=n)
        frames = [(await c.next_frame(30)) for _ in range(n)]
        await c.wait_policy(0, 30)
        for i, f in enumerate(frames):
            t0 = time.perf_counter()
            await c.feedback(f"lat-{i}", "rate", frame=f.frame, value=1.0 if f.cls == 1 else -1.0)
            await c.wait_policy(c.policy["version"] + 1, 30)
            out.append(time.perf_counter() - t0)
    return sorted(out)


async def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("url")
    ap.add_argument("--connections", type=int, default=16)
    ap.add_argument("--window", type=int, default=16)
    ap.add_argument("--seconds", type=float, default=5)
    a = ap.parse_args()
    pl = await policy_latency(a.url)
    print(f"policy_update_p50_ms {pl[len(pl) // 2] * 1e3:.2f}")
    print(f"policy_update_p99_ms {pl[min(len(pl) - 1, int(0.99 * len(pl)))] * 1e3:.2f}")
    lat, counts, catchup, last_ack = [], [0] * a.connections, [], []
    t0 = time.perf_counter()
    await asyncio.gather(*(one(a.url, k, a.window, a.seconds, lat, counts, catchup, last_ack)
                           for k in range(a.connections)))
    dt = max(last_ack) - t0
    lat.sort()
    q = lambda p: lat[min(len(lat) - 1, int(p * len(lat)))] * 1e3  # noqa: E731
    print(f"feedback_acks_per_s {sum(counts) / dt:.1f}")
    print(f"feedback_ack_p50_ms {q(0.50):.2f}")
    print(f"feedback_ack_p99_ms {q(0.99):.2f}")
    print(f"learn_catchup_s {max(catchup):.2f}")


if __name__ == "__main__":
    asyncio.run(main())
