"""test_jobs — background training through a real `steer serve`: `job` messages (admin token),
`steer worker` processes, progress, checkpoints, promotion with a hot swap while a stream runs
(frames switch to the new model_version with no gap), the model registry, pause / resume, cancel,
a worker killed with SIGKILL then resumed from its checkpoint, a corrupted checkpoint refused with the
served model kept, rollback, and a restart that resumes an interrupted job and keeps serving the
promoted version; a progressive-growing job, a wall-clock budget. Uses the tiny config so each job takes seconds. Prints TAP.
"""
import asyncio
import json
import os
import re
import signal
import sqlite3
import sys
import subprocess
import tempfile

import steer_harness as h
from steer_client import connect

T = 120
STEER = os.environ.get("STEER_BIN", "build/steer")
TOKEN = "admin-secret"


def make_base(root, ch=None):
    """A tiny checkpoint trained for 20 steps by `steer worker` itself: the served model."""
    d = os.path.join(root, "base" if ch is None else f"base{ch}")
    os.makedirs(d)
    spec = {"config": "tiny", "steps": 20, "batch": 16, "save_every": 0, "eval_n": 0}
    if ch is not None:
        spec["ch"] = ch
    with open(os.path.join(d, "spec.json"), "w") as f:
        json.dump(spec, f)
    out = subprocess.run([STEER, "worker", "--dir", d], capture_output=True, timeout=600)
    assert out.returncode == 0, out.stderr.decode()[-2000:]
    return os.path.join(d, "final.safetensors")


async def job_reply(c, op=None, ok=lambda m: True):
    """The next `job` message (with op, if given) for which ok(m) holds; errors raise."""
    while True:
        m = await c.recv(T)
        if not isinstance(m, dict):
            continue
        if m.get("t") == "error":
            return m
        if m.get("t") == "job" and (op is None or m.get("op") == op) and ok(m):
            return m


async def wait_job(c, jid, pred):
    return await job_reply(c, None, lambda m: m.get("job", {}).get("id") == jid and pred(m["job"]))


async def listing(c, op):
    await c.send({"t": "job", "op": op})
    items = []
    while True:
        m = await job_reply(c)
        if m.get("op") in ("list", "models") and "count" in m:
            return items, m
        if m.get("op") in ("list", "model"):
            items.append(m.get("job") or m.get("model"))


async def test_jobs(tap, root):
    base = make_base(root)
    tok = os.path.join(root, "admin.token")
    with open(tok, "w") as f:
        f.write(TOKEN + "\n")
    data = os.path.join(root, "data")
    args = ("--model", base, "--admin-token-file", tok, "--data", data, "--policy-pool", "0",
            "--batch", "8")
    with h.Server(*args) as srv:
        async with connect(srv.ws_url, user="viewer") as v:
            await v.send({"t": "job", "op": "list"})
            m = await v.recv(T)
            tap.ok(m.get("t") == "error" and m.get("code") == "unauthorized",
                   "job without the admin token: unauthorized", m)
        async with connect(srv.ws_url, user="admin", token=TOKEN) as a:
            await a.send({"t": "job", "op": "submit", "spec": {"steps": 5, "bogus": 1}})
            m = await job_reply(a)
            tap.ok(m.get("t") == "error" and "bogus" in m.get("msg", ""), "a bad spec is refused", m)
            # where and how the worker computes is checked at submission, not when the job runs
            for bad, word in (({"bf16": 1}, "bf16 must be true or false"),
                              ({"tf32": "yes"}, "tf32 must be true or false"),
                              ({"device": "tpu"}, "device must be")):
                await a.send({"t": "job", "op": "submit", "spec": {"steps": 5, **bad}})
                m = await job_reply(a)
                tap.ok(m.get("t") == "error" and word in m.get("msg", ""),
                       f"spec {bad} refused at submission", m)
            await a.send({"t": "job", "op": "pause", "id": 999})
            m = await job_reply(a)
            tap.ok(m.get("t") == "error" and "999" in m.get("msg", ""), "an unknown job id is refused", m)

            # a viewer streams frames while a job trains, is promoted, and is swapped in
            async with connect(srv.ws_url, user="viewer") as v:
                await v.stream(1, n=4, format="raw8")
                first = [await v.next_frame(T) for _ in range(4)]
                tap.ok(all(f.model_version == 1 for f in first), "frames from model version 1")
                await a.send({"t": "job", "op": "submit", "spec": {
                    "init": base, "steps": 30, "batch": 16, "save_every": 10, "log_every": 5,
                    "eval_n": 300, "fd_margin": 1000}})
                sub = await job_reply(a, "submit")
                tap.ok(sub.get("t") == "job" and sub["job"]["state"] in ("queued", "running"),
                       "submit answered after COMMIT with the job", sub)
                jid = sub["job"]["id"]
                prog = await wait_job(a, jid, lambda j: j["step"] >= 10 and j["loss_d"] is not None)
                tap.ok(prog["job"]["steps"] == 30, "progress updates with step, steps and losses",
                       prog["job"])
                done = await wait_job(a, jid, lambda j: j["model_version"] == 2)
                tap.ok(done["job"]["state"] == "done" and done["job"]["fd"] is not None and
                       done["job"]["parent_fd"] is not None,
                       "the job is done with FD beside its parent's, promoted as version 2", done["job"])
                # keep streaming across the swap: seq has no gap, version switches to 2 and stays
                seen, last = [], first[-1].seq
                gap = False
                while not seen or seen[-1] != 2:
                    await v.credit(1, 1)
                    f = await v.next_frame(T)
                    gap |= f.seq != last + 1
                    last = f.seq
                    seen.append(f.model_version)
                    if len(seen) > 200:
                        break
                tap.ok(seen[-1] == 2 and not gap, "the stream went on across the swap: frames now "
                       "carry model_version 2, no frame lost", seen[-5:])
            m = srv.metrics()
            tap.ok(h.metric(m, "steer_model_swaps_total") == 1 and h.metric(m, "steer_model_version") == 2
                   and h.metric(m, "steer_jobs", state="done") == 1
                   and h.metric(m, "steer_models_registered") == 2,
                   "/metrics: one swap, version 2 served, one job done, two versions registered")
            jobs, end = await listing(a, "list")
            tap.ok(end["count"] == 1 and jobs[0]["id"] == jid and jobs[0]["state"] == "done",
                   "list: the job, done", (jobs, end))
            models, end = await listing(a, "models")
            tap.ok([m["version"] for m in models] == [1, 2] and end["served"] == 2 and
                   models[1]["parent"] == 1 and models[1]["job"] == jid and
                   re.fullmatch("[0-9a-f]{64}", models[1]["sha256"]),
                   "models: versions 1 and 2 with parent, job and sha256; 2 served", (models, end))

            # the CLI: a job submitted with promote false, promoted later by `steer job promote`
            cli = [STEER, "job", "--server", srv.ws_url, "--token-file", tok]
            spec_path = os.path.join(root, "spec.json")
            with open(spec_path, "w") as f:
                json.dump({"init": base, "steps": 10, "batch": 16, "save_every": 0, "eval_n": 300,
                           "fd_margin": 1000, "promote": False}, f)
            out = subprocess.run(cli + ["submit", spec_path, "--wait", "--json"], capture_output=True,
                                 text=True, timeout=600)
            last = json.loads(out.stdout.strip().splitlines()[-1]) if out.stdout.strip() else {}
            jc = last.get("job", {})
            tap.ok(out.returncode == 0 and jc.get("state") == "done" and jc.get("model_version") == 0
                   and "promote: false" in jc.get("message", ""),
                   "steer job submit --wait: the job ran to done, not promoted (promote: false)",
                   (out.returncode, out.stdout[-600:], out.stderr[-600:]))
            out = subprocess.run(cli + ["promote", str(jc.get("id", 0))], capture_output=True, text=True,
                                 timeout=120)
            tap.ok(out.returncode == 0, "steer job promote ID", out.stdout + out.stderr)
            await wait_job(a, jc.get("id"), lambda j: j["model_version"] == 3)
            out = subprocess.run(cli + ["models"], capture_output=True, text=True, timeout=120)
            tap.ok(out.returncode == 0 and "3 model versions; serving model version 3" in out.stdout,
                   "steer job models: three versions, 3 served", out.stdout)
            out = subprocess.run([STEER, "job", "--server", srv.ws_url, "list"], capture_output=True,
                                 text=True, timeout=120)
            tap.ok(out.returncode != 0 and "unauthorized" in out.stdout,
                   "steer job without the token: unauthorized, non-zero exit", out.stdout + out.stderr)

            # pause / resume / cancel on a long job
            await a.send({"t": "job", "op": "submit", "spec": {
                "config": "tiny", "steps": 100000, "batch": 16, "save_every": 10, "log_every": 5,
                "eval_n": 0}})
            jid2 = (await job_reply(a, "submit"))["job"]["id"]
            await wait_job(a, jid2, lambda j: j["message"].startswith("checkpoint"))
            await a.send({"t": "job", "op": "pause", "id": jid2})
            paused = await wait_job(a, jid2, lambda j: j["state"] == "paused")
            at = paused["job"]["step"]
            tap.ok(at >= 10, "pause: the worker checkpoints and stops", paused["job"])
            await a.send({"t": "job", "op": "resume", "id": jid2})
            resumed = await wait_job(a, jid2, lambda j: j["message"].startswith("running from step"))
            tap.ok(resumed["job"]["step"] == at, "resume: the worker continues from the checkpoint",
                   resumed["job"])

            # SIGKILL the worker: the job fails with the reason; the server goes on; resume finishes
            running = await wait_job(a, jid2, lambda j: j["step"] > at)
            pids = subprocess.run(["pgrep", "-f", f"worker --dir {data}/jobs/{jid2}"],
                                  capture_output=True, text=True).stdout.split()
            tap.ok(len(pids) == 1, "one worker process runs the job", pids)
            os.kill(int(pids[0]), signal.SIGKILL)
            failed = await wait_job(a, jid2, lambda j: j["state"] == "failed")
            tap.ok("signal 9" in failed["job"]["message"], "a killed worker fails its job, saying why",
                   failed["job"]["message"])
            tap.ok(srv.healthz()[0] == 200, "the server is still up")
            await a.send({"t": "job", "op": "resume", "id": jid2})
            again = await wait_job(a, jid2, lambda j: j["message"].startswith("running from step"))
            tap.ok(at <= again["job"]["step"] <= failed["job"]["step"],
                   "resumed after the kill from its last checkpoint", (at, again["job"], failed["job"]))
            await a.send({"t": "job", "op": "cancel", "id": jid2})
            cancelled = await wait_job(a, jid2, lambda j: j["state"] == "cancelled")
            tap.ok(True, "cancel: the job is cancelled", cancelled["job"])

            # a crash inside the worker: its stderr tail is kept
            await a.send({"t": "job", "op": "submit", "spec": {
                "config": "tiny", "steps": 50, "batch": 16, "fail_at": 3, "eval_n": 0}})
            jid3 = (await job_reply(a, "submit"))["job"]["id"]
            crashed = await wait_job(a, jid3, lambda j: j["state"] == "failed")
            tap.ok("fail_at" in crashed["job"]["message"] and "signal 6" in crashed["job"]["message"],
                   "an aborting worker: failed, with the tail of its stderr", crashed["job"]["message"])

            # rollback to version 1; a corrupted registry file is refused and the model kept
            await a.send({"t": "job", "op": "rollback", "version": 1})
            m = await job_reply(a, "rollback")
            tap.ok(m.get("t") == "job", "rollback accepted", m)
            while not (isinstance(m, dict) and m.get("t") == "model"):
                m = await a.recv(T)
            tap.eq(m.get("version"), 1, "every session is told: model {version: 1}")
        async with connect(srv.ws_url, user="viewer3") as v3:
            await v3.stream(1, n=1, format="raw8")
            f = await v3.next_frame(T)
            tap.eq(f.model_version, 1, "after the rollback frames come from version 1")
        final2 = os.path.join(data, "jobs", str(jid), "final.safetensors")
        with open(final2, "r+b") as f:
            f.seek(200)
            f.write(b"\xff" * 64)
        async with connect(srv.ws_url, user="admin", token=TOKEN) as a:
            await a.send({"t": "job", "op": "rollback", "version": 2})
            await job_reply(a, "rollback")
            m = await job_reply(a, None, lambda m: False)  # the swap's failure comes as an error
            tap.ok(m.get("t") == "error" and "version 2 not served" in m.get("msg", ""),
                   "a corrupted checkpoint is refused", m)
            async with connect(srv.ws_url, user="viewer4") as v4:
                await v4.stream(1, n=1, format="raw8")
                f = await v4.next_frame(T)
                tap.eq(f.model_version, 1, "and the served model is kept")
            # a long job interrupted by the server's stop resumes at the next start
            await a.send({"t": "job", "op": "submit", "spec": {
                "config": "tiny", "steps": 100000, "batch": 16, "save_every": 10, "eval_n": 0}})
            jid4 = (await job_reply(a, "submit"))["job"]["id"]
            await wait_job(a, jid4, lambda j: j["message"].startswith("checkpoint"))
        srv.stop_ok(tap, "the server stops cleanly with a worker running (it checkpoints first)")
    with sqlite3.connect(os.path.join(data, "steer.db")) as db:
        st = db.execute("SELECT state, step FROM job WHERE id = ?", (jid4,)).fetchone()
    tap.ok(st[0] == "queued" and st[1] >= 10, "the interrupted job is queued in the store", st)
    with h.Server(*args) as srv:
        async with connect(srv.ws_url, user="admin", token=TOKEN) as a:
            jobs, _ = await listing(a, "list")
            j4 = [j for j in jobs if j["id"] == jid4][0]
            tap.ok(j4["state"] == "running", "after the restart the job runs again", j4)
            await a.send({"t": "job", "op": "cancel", "id": jid4})
            await wait_job(a, jid4, lambda j: j["state"] == "cancelled")
            models, end = await listing(a, "models")
            tap.eq(end["served"], 1, "the restarted server serves the last version swapped in (1)")
        srv.stop_ok(tap)


async def probe_brightness(url):
    """Mean pixel of 32 frames of a seeded stream of a user with no feedback (prior latents)."""
    async with connect(url, user="probe") as c:
        await c.stream(1, n=32, format="raw8", seed=123)
        fs = [await c.next_frame(T) for _ in range(32)]
    return sum(sum(f.data) / len(f.data) for f in fs) / len(fs), fs[0].model_version


async def test_finetune_distill(tap, root):
    """Fine-tuning G on the users' feedback (they like dark frames) and distilling it into a
    narrower student, both promoted and swapped in."""
    base = make_base(root, ch=16)
    tok = os.path.join(root, "admin.token")
    data = os.path.join(root, "data-ft")
    args = ("--model", base, "--admin-token-file", tok, "--data", data, "--batch", "8",
            "--population-every", "0")
    with h.Server(*args) as srv:
        for user in ("ann", "ben"):
            async with connect(srv.ws_url, user=user) as c:
                await c.stream(1, n=40, format="raw8")
                fs = [await c.next_frame(T) for _ in range(40)]
                means = [sum(f.data) / len(f.data) for f in fs]
                median = sorted(means)[20]
                ids = []
                for f, m in zip(fs, means):
                    ids.append(f"{user}-{f.frame}")
                    await c.feedback(ids[-1], "rate", frame=f.frame, value=1 if m < median else -1)
                want = set(ids)
                while want:
                    m = await c.recv(T)
                    if isinstance(m, dict) and m.get("t") == "ack":
                        want.discard(m["id"])
        before, v = await probe_brightness(srv.ws_url)
        async with connect(srv.ws_url, user="admin", token=TOKEN) as a:
            await a.send({"t": "job", "op": "submit", "spec": {
                "kind": "finetune", "steps": 30, "batch": 16, "log_every": 10, "eval_n": 300,
                "reward_n": 300, "fd_margin": 1000}})
            jid = (await job_reply(a, "submit"))["job"]["id"]
            done = await wait_job(a, jid, lambda j: j["state"] in ("failed", "cancelled") or
                                  j["model_version"] > 0 or j["message"].startswith("done; not"))
            msg = done["job"]["message"]
            r = re.search(r"users' reward ([0-9.]+), was ([0-9.]+)", msg)
            tap.ok(done["job"]["model_version"] == 2 and r and float(r.group(1)) > float(r.group(2)),
                   "finetune: the users' reward (P preferred to the average frame) beats the served "
                   "model's; promoted as version 2", msg)
            after, v2 = await probe_brightness(srv.ws_url)
            tap.ok(v2 == 2 and after < before, "the same latents now draw darker frames, as the users "
                   "asked", (before, after, v2))
            await a.send({"t": "job", "op": "submit", "spec": {
                "kind": "distill", "ch": 8, "steps": 30, "batch": 16, "log_every": 10,
                "eval_n": 300, "fd_margin": 1000}})
            jid = (await job_reply(a, "submit"))["job"]["id"]
            done = await wait_job(a, jid, lambda j: j["state"] in ("failed", "cancelled") or
                                  j["model_version"] > 0 or j["message"].startswith("done; not"))
            msg = done["job"]["message"]
            tap.ok(done["job"]["model_version"] == 3 and re.search(r"[0-9]+ images/s, was [0-9]+", msg),
                   "distill: a student of half the width, its speed beside the teacher's, promoted "
                   "as version 3", msg)
        _, v3 = await probe_brightness(srv.ws_url)
        tap.eq(v3, 3, "frames now come from the student")
        srv.stop_ok(tap)


async def test_progressive(tap, root):
    """A progressive-growing job from scratch (8x8, fading into 16x16, then 32x32) reports where its
    schedule stands, finishes, and is swapped in; a wall-clock budget ends a job as done; switches
    that do not go with growing, and growing from a checkpoint without its layers, fail the job
    with a message that says so."""
    base = os.path.join(root, "base", "final.safetensors")
    tok = os.path.join(root, "admin.token")
    args = ("--model", base, "--admin-token-file", tok, "--data", os.path.join(root, "data-prog"),
            "--policy-pool", "0", "--batch", "8")
    with h.Server(*args) as srv:
        async with connect(srv.ws_url, user="admin", token=TOKEN) as a:
            await a.send({"t": "job", "op": "submit", "spec": {
                "config": "tiny", "steps": 40, "batch": 16, "log_every": 2, "save_every": 0,
                "eval_n": 300, "fd_margin": 1000, "set": {"prog_stable": 10, "prog_fade": 6}}})
            jid = (await job_reply(a, "submit"))["job"]["id"]
            seen = []
            while True:
                m = await wait_job(a, jid, lambda j: True)
                j = m["job"]
                if j["resolution"] is not None:
                    seen.append((j["step"], j["resolution"], j["alpha"]))
                if j["state"] in ("done", "failed", "cancelled") and (j["model_version"] or
                                                                     j["state"] != "done"):
                    break
            res = [r for _, r, _ in seen]
            tap.ok(res and res[0] == 8 and 16 in res and res[-1] == 32 and res == sorted(res),
                   "progress: the resolution grows 8 -> 16 -> 32", seen)
            tap.ok(any(r == 16 and 0 < al < 1 for _, r, al in seen) and
                   any(r == 32 and 0 < al < 1 for _, r, al in seen) and seen[-1][2] == 1,
                   "16x16 and 32x32 fade in (alpha < 1), then alpha 1", seen)
            tap.ok(j["state"] == "done" and j["model_version"] == 2 and j["fd"] is not None,
                   "the grown model is done, with FD, and promoted as version 2", j)
            async with connect(srv.ws_url, user="viewer") as v:
                await v.stream(1, n=2, format="raw8")
                fs = [await v.next_frame(T) for _ in range(2)]
                tap.ok(all(f.model_version == 2 and len(f.data) == 32 * 32 for f in fs),
                       "frames come from it at 32x32", [(f.model_version, len(f.data)) for f in fs])
            # a wall-clock budget: far more steps than 3 s allow; done, with the step it reached
            await a.send({"t": "job", "op": "submit", "spec": {
                "config": "tiny", "steps": 1000000, "batch": 16, "save_every": 0, "eval_n": 0,
                "seconds": 3}})
            jid = (await job_reply(a, "submit"))["job"]["id"]
            m = await wait_job(a, jid, lambda j: j["state"] in ("done", "failed", "cancelled"))
            tap.ok(m["job"]["state"] == "done" and 0 < m["job"]["step"] < 1000000,
                   "seconds: the job ends as done at the step its budget allowed", m["job"])
            for spec, want in (({"config": "tiny", "steps": 5, "set": {"prog_stable": 2, "r1_gamma": 1}},
                                "does not go with r1_gamma"),
                               ({"init": base, "steps": 5, "set": {"prog_stable": 2}},
                                "progressive layers")):
                await a.send({"t": "job", "op": "submit", "spec": spec})
                jid = (await job_reply(a, "submit"))["job"]["id"]
                m = await wait_job(a, jid, lambda j: j["state"] in ("done", "failed", "cancelled"))
                tap.ok(m["job"]["state"] == "failed" and want in m["job"]["message"],
                       f"growing with {sorted(spec['set'])} / init {'init' in spec}: failed, "
                       f"saying '{want}'", m["job"])
        srv.stop_ok(tap)


async def main():
    tap = h.Tap()
    with tempfile.TemporaryDirectory(prefix="steer-jobs-") as root:
        await test_jobs(tap, root)
        await test_progressive(tap, root)
        await test_finetune_distill(tap, root)
    return tap.done()


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
