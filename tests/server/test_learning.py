"""test_learning — learning from users through a real `steer serve`: the `policy` status message,
feedback changing the policy that draws the user's next frames (policy_version on frames and in the
store), the learning figures in /metrics, pair mode asking the pairs the reward ensemble is least
sure of, walk streams, a restart rebuilding the same policy from the store, and a seeded simulated
user (`steer simulate --server`) reaching satisfaction through the server. Prints TAP.
"""
import asyncio
import json
import math
import os
import sqlite3
import sys
import subprocess
import tempfile

import steer_harness as h
from steer_client import connect

T = 30
STEER = os.environ.get("STEER_BIN", "build/steer")


async def frames(c, sid, n, **kw):
    await c.stream(sid, n=n, **kw)
    return [await c.next_frame(T) for _ in range(n)]


async def acked(c, ids):
    want = set(ids)
    while want:
        m = await c.recv(T)
        if isinstance(m, dict) and m.get("t") == "ack":
            want.discard(m["id"])
        elif isinstance(m, dict) and m.get("t") == "error":
            raise RuntimeError(m)


async def test_policy_messages(tap, data):
    with h.Server("--data", data) as srv:
        async with connect(srv.ws_url, user="bo") as c:
            p0 = await c.wait_policy(0, T)
            tap.ok(p0["version"] == 0 and p0["feedback"] == 0 and p0["comparisons"] == 0 and
                   p0["accuracy"] is None and p0["kl"] == 0.0, "after welcome: the prior's policy", p0)
            tap.ok(len(p0["class_probs"]) == 10 and all(abs(x - 0.1) < 1e-6 for x in p0["class_probs"]),
                   "class_probs: uniform over the 10 classes", p0["class_probs"])
            fs = await frames(c, 1, 8)
            tap.ok(all(f.policy_version == 0 for f in fs), "frames before any feedback: policy_version 0")
            # dislike every frame that is not a trouser (class 1), like the trousers
            for i, f in enumerate(fs):
                await c.feedback(f"r{i}", "rate", frame=f.frame, value=1 if f.cls == 1 else -1)
            await acked(c, [f"r{i}" for i in range(8)])
            p = await c.wait_policy(8, T)
            tap.eq(p["feedback"], 8, "after 8 ratings: feedback 8")
            tap.ok(p["version"] == 8 and p["comparisons"] == 8, "version counts the feedback learned from", p)
            tap.ok(p["kl"] > 0, "the policy moved away from the prior (KL > 0)", p["kl"])
            versions = [x["version"] for x in c.policies]
            tap.ok(versions == sorted(versions), "policy versions only grow", versions)
            disliked = {f.cls for f in fs if f.cls != 1}
            tap.ok(sum(p["class_probs"][k] for k in disliked) < 0.5 * len(disliked) / 10 + 0.05,
                   "disliked classes lost probability", (disliked, p["class_probs"]))
            await c.credit(1, 8)
            after = [await c.next_frame(T) for _ in range(8)]
            tap.ok(all(f.policy_version == 8 for f in after), "the next frames come from the new policy",
                   [f.policy_version for f in after])
            # feedback on those frames is stored with their policy version
            await c.feedback("r-new", "rate", frame=after[0].frame, value=1)
            await acked(c, ["r-new"])
            await c.wait_policy(9, T)
            m = srv.metrics()
            tap.eq(h.metric(m, "steer_policy_users"), 1, "/metrics: one user with a learned policy")
            tap.ok(h.metric(m, "steer_policy_feedback_total") == 9, "/metrics: 9 feedback events learned from",
                   h.metric(m, "steer_policy_feedback_total"))
            tap.ok(h.metric(m, "steer_policy_update_seconds_count") >= 2,
                   "/metrics: update latency histogram counts the updates")
            tap.eq(h.metric(m, "steer_policy_failures_total"), 0, "/metrics: no failures")
            tap.ok(h.metric(m, "steer_policy_kl_mean") > 0, "/metrics: mean KL of the users' policies")
        # a second user starts from the prior while the population model has not refitted yet
        async with connect(srv.ws_url, user="cy") as c2:
            p = await c2.wait_policy(0, T)
            tap.ok(p["version"] == 0 and p["kl"] == 0.0, "a new user starts from the prior "
                   "before the population's first refit (every 256 feedback)", p)
        srv.stop_ok(tap)
    with sqlite3.connect(os.path.join(data, "steer.db")) as db:
        pv = db.execute("SELECT ff.policy_version FROM feedback_frame ff JOIN feedback f "
                        "ON f.id = ff.feedback WHERE f.client_id = 'r-new'").fetchall()
    tap.eq(pv, [(8,)], "the store keeps the policy version the rated frame was drawn with")


async def test_restart_rebuilds(tap, data):
    """The policy after a restart equals the one before it (same store), to 1e-9: the learner's
    features do not depend on how feedback happened to be batched (server/learn.c,
    frames_features)."""
    with h.Server("--data", data) as srv:
        async with connect(srv.ws_url, user="bo") as c:
            before = await c.wait_policy(9, T)
        srv.stop_ok(tap)
    with h.Server("--data", data) as srv:
        tap.ok("9 stored feedback of 1 users replayed" in srv.stderr_tail(),
               "the restarted server replays the stored feedback", srv.stderr_tail()[-400:])
        async with connect(srv.ws_url, user="bo") as c:
            after = await c.wait_policy(0, T)
            tap.eq((after["version"], after["feedback"], after["comparisons"]),
                   (before["version"], before["feedback"], before["comparisons"]),
                   "after a restart: the same version, feedback and comparisons")
            tap.ok(abs(after["kl"] - before["kl"]) < 1e-9 and
                   max(abs(a - b) for a, b in zip(after["class_probs"], before["class_probs"])) < 1e-9,
                   "and the same policy (KL, class probabilities)", (before, after))
            fs = await frames(c, 1, 4)
            tap.ok(all(f.policy_version == before["version"] for f in fs),
                   "frames after the restart come from the rebuilt policy")
        m = srv.metrics()
        tap.eq(h.metric(m, "steer_policy_users"), 1, "/metrics after restart: the rebuilt user")
        srv.stop_ok(tap)


async def test_pair_and_walk(tap, data):
    with h.Server("--data", data) as srv:
        async with connect(srv.ws_url, user="di") as c:
            fs = await frames(c, 1, 4, mode="pair")
            tap.ok(fs[0].pair == fs[0].frame and fs[1].pair == fs[0].frame and fs[1].side == 1,
                   "pair mode: A and B")
            await c.feedback("p1", "pair", winner=fs[0].frame, loser=fs[1].frame)
            await c.feedback("p2", "pair", winner=fs[2].frame, loser=fs[3].frame, tie=True)
            await acked(c, ["p1", "p2"])
            p = await c.wait_policy(2, T)
            tap.eq(p["comparisons"], 2, "two pair answers (one a tie): two comparisons")
            await c.credit(1, 8)
            more = [await c.next_frame(T) for _ in range(8)]
            tap.ok(all(f.policy_version == 2 for f in more) and
                   all(more[i].pair == more[i - (i % 2)].frame for i in range(8)),
                   "after learning, pairs still come as A/B from the new policy")
            tap.ok(all(more[i].frame != more[i + 1].frame for i in range(0, 8, 2)), "two different frames")
            # walk: feedback on a walk frame is learned from and the walk goes on
            w = await frames(c, 2, 6, mode="walk", step=0.2)
            await c.feedback("w1", "rate", frame=w[-1].frame, value=1)
            await acked(c, ["w1"])
            await c.wait_policy(3, T)
            await c.credit(2, 6)
            w2 = [await c.next_frame(T) for _ in range(6)]
            tap.ok(all(f.policy_version == 3 and f.stream == 2 for f in w2),
                   "walk frames after a rating come from the new policy")
        srv.stop_ok(tap)


async def teach(c, prefix, like, dislike, n):
    """Rates n frames of class `like` up and n of class `dislike` down; returns the last policy."""
    ids, shown = [], [(await frames(c, 1, n, cls=like), 1), (await frames(c, 2, n, cls=dislike), -1)]
    for fs, value in shown:
        for f in fs:
            ids.append(f"{prefix}{f.frame}")
            await c.feedback(ids[-1], "rate", frame=f.frame, value=value)
    await acked(c, ids)
    return await c.wait_policy(2 * n, T)


async def test_population(tap, data):
    """Every user's feedback refits a population model (every --population-every stored
    feedback): new users start from its policy, existing users' reward models from its weights,
    and a restart rebuilds both."""
    srv_args = ("--data", data, "--population-every", "8")
    with h.Server(*srv_args) as srv:
        async with connect(srv.ws_url, user="ann") as a, connect(srv.ws_url, user="ben") as b:
            ann = await teach(a, "a", 7, 2, 8)
            await teach(b, "b", 7, 2, 8) # 32 stored feedback: refits at 8, 16, 24 and 32
        m = srv.metrics()
        tap.ok(h.metric(m, "steer_population_refits_total") >= 1,
               "/metrics: the population model refitted", h.metric(m, "steer_population_refits_total"))
        tap.eq(h.metric(m, "steer_population_comparisons"), 32,
               "/metrics: on every user's 32 comparisons")
        async with connect(srv.ws_url, user="cat") as c:
            p = await c.wait_policy(0, T)
            tap.ok(p["version"] == 0 and p["feedback"] == 0 and p["comparisons"] == 0,
                   "a new user has given nothing (version 0)", p)
            tap.ok(p["kl"] > 0 and p["class_probs"][7] > 0.2 and p["class_probs"][2] < 0.1,
                   "but starts from the population's policy: the class everyone liked is likelier, "
                   "the one everyone disliked less likely", p)
            fs = await frames(c, 1, 40)
            tap.ok(sum(f.cls == 7 for f in fs) > sum(f.cls == 2 for f in fs),
                   "its frames follow the population's taste", [f.cls for f in fs])
            cat = p
        async with connect(srv.ws_url, user="ann") as a:
            ann = await a.wait_policy(16, T) # refitted over the population's latest weights
        srv.stop_ok(tap)
    with h.Server(*srv_args) as srv:
        tap.ok("32 stored feedback of 2 users replayed" in srv.stderr_tail(),
               "the restart replays both users' feedback", srv.stderr_tail()[-400:])
        for user, before in (("cat", cat), ("ann", ann)):
            async with connect(srv.ws_url, user=user) as c:
                after = await c.wait_policy(before["version"], T)
            tap.ok(after["version"] == before["version"] and abs(after["kl"] - before["kl"]) < 1e-9 and
                   max(abs(x - y) for x, y in zip(after["class_probs"], before["class_probs"])) < 1e-9,
                   f"after a restart, {user}'s policy is rebuilt the same (population included)",
                   (before, after))
        srv.stop_ok(tap)


def test_simulated_user(tap):
    data = tempfile.mkdtemp(prefix="steer-sim-")
    with h.Server("--data", data) as srv:
        out = subprocess.run([STEER, "simulate", "--server", srv.ws_url, "--method", "policy",
                              "--class", "1", "--users", "1", "--budget", "40", "--seed", "3",
                              "--json"], capture_output=True, text=True, timeout=600)
        tap.ok(out.returncode == 0, "steer simulate --server exits 0", out.stderr[-2000:])
        r = json.loads(out.stdout.strip().splitlines()[-1]) if out.returncode == 0 else {}
        tap.ok(r.get("satisfied") == 1, "a seeded simulated user (likes trousers) is satisfied "
               "through the server within 40 feedback events", r)
        tap.ok(r.get("median_events") is not None and r["median_events"] <= 40,
               "events to satisfaction reported", r.get("median_events"))
        m = srv.metrics()
        tap.ok(h.metric(m, "steer_policy_feedback_total") == r.get("mean_events"),
               "the server learned from every event the user gave", h.metric(m, "steer_policy_feedback_total"))
        srv.stop_ok(tap)


async def main():
    tap = h.Tap()
    data = tempfile.mkdtemp(prefix="steer-learn-")
    await test_policy_messages(tap, data)
    await test_restart_rebuilds(tap, data)
    await test_pair_and_walk(tap, tempfile.mkdtemp(prefix="steer-pair-"))
    await test_population(tap, tempfile.mkdtemp(prefix="steer-pop-"))
    test_simulated_user(tap)
    return tap.done()


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
