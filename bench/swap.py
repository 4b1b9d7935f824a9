"""bench/swap.py — do repeated hot swaps slow serving down? (issue 5: "Repeated swaps must not slow
serving down over time.")

Starts a real `steer serve` (the served model, an admin token, its own data folder), makes a second
model version with a one-step job (promoted by the FD gate with a wide margin), then alternates
`rollback` between the two versions N times while 8 connections keep streaming raw frames. It prints
the frames/s of a window before the first swap and of one after the last, the server's resident
memory (VmRSS) before and after, every swap's load-to-serve time, and whether any frame or stream
was lost (seq gaps, errors):

    /usr/bin/python3 bench/swap.py [--model models/fmnist32c.safetensors] [--swaps 40] [--seconds 4]

Prints `name value` lines for bench/run.sh.
"""
import argparse
import asyncio
import os
import sys
import tempfile
import time

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path.insert(0, os.path.join(ROOT, "clients", "python"))
sys.path.insert(0, os.path.join(ROOT, "tests", "server"))
import steer_harness as h  # noqa: E402
from steer_client import connect  # noqa: E402

TOKEN = "bench-admin"


def rss_kb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


async def viewer(url, k, stop, counts, gaps):
    async with connect(url, user=f"swap-viewer{k}") as c:
        await c.stream(1, n=8, format="raw8")
        last = None
        while not stop.is_set():
            f = await c.next_frame(60)
            if last is not None and f.seq != last + 1:
                gaps.append((k, last, f.seq))
            last = f.seq
            counts[k] += 1
            await c.credit(1, 1)


async def job_msg(a, pred):
    while True:
        m = await a.recv(600)
        if isinstance(m, dict) and m.get("t") == "error":
            raise SystemExit(f"bench: {m}")
        if isinstance(m, dict) and pred(m):
            return m


async def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="models/fmnist32c.safetensors")
    ap.add_argument("--swaps", type=int, default=40)
    ap.add_argument("--seconds", type=float, default=4)
    a = ap.parse_args()
    root = tempfile.mkdtemp(prefix="steer-swap-")
    tok = os.path.join(root, "token")
    with open(tok, "w") as f:
        f.write(TOKEN + "\n")
    with h.Server("--model", a.model, "--admin-token-file", tok, "--data", os.path.join(root, "data"),
                  "--policy-pool", "0", "--batch", "16") as srv:
        async with connect(srv.ws_url, user="admin", token=TOKEN) as adm:
            await adm.send({"t": "job", "op": "submit", "spec": {
                "init": os.path.abspath(a.model), "steps": 1, "batch": 8, "save_every": 0,
                "eval_n": 200, "fd_margin": 1e9}})
            await job_msg(adm, lambda m: m.get("t") == "model" and m.get("version") == 2)
            stop, counts, gaps = asyncio.Event(), [0] * 8, []
            tasks = [asyncio.create_task(viewer(srv.ws_url, k, stop, counts, gaps)) for k in range(8)]
            await asyncio.sleep(2)  # warm

            async def window():
                c0, t0 = sum(counts), time.perf_counter()
                await asyncio.sleep(a.seconds)
                return (sum(counts) - c0) / (time.perf_counter() - t0)

            before_fps, before_rss = await window(), rss_kb(srv.proc.pid)
            times = []
            for i in range(a.swaps):
                version = 1 if i % 2 == 0 else 2
                t0 = time.perf_counter()
                await adm.send({"t": "job", "op": "rollback", "version": version})
                await job_msg(adm, lambda m: m.get("t") == "model" and m.get("version") == version)
                times.append(time.perf_counter() - t0)
            after_fps, after_rss = await window(), rss_kb(srv.proc.pid)
            stop.set()
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        srv.stop()
    times.sort()
    print(f"swap_count {a.swaps}")
    print(f"swap_p50_ms {times[len(times) // 2] * 1e3:.1f}")
    print(f"swap_max_ms {times[-1] * 1e3:.1f}")
    print(f"swap_fps_before {before_fps:.1f}")
    print(f"swap_fps_after {after_fps:.1f}")
    print(f"swap_rss_before_kb {before_rss}")
    print(f"swap_rss_after_kb {after_rss}")
    print(f"swap_seq_gaps {len(gaps)}")


if __name__ == "__main__":
    asyncio.run(main())
