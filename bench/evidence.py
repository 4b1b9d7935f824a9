"""What the bench/*_evidence.sh scripts read back from a `steer worker` run: its stdout's msgpack
messages (docs/jobs.md). Imported by their report code (sys.path holds bench/)."""
import os

import msgpack


def load_run(out, name):
    """OUT/NAME's messages: done (the `done` message), evals [(step, fd, seconds)] with the final
    FD last, progress (the `progress` messages)."""
    with open(os.path.join(out, name, "out.msgpack"), "rb") as f:
        msgs = list(msgpack.Unpacker(f, raw=False))
    done = next(m for m in msgs if m["t"] == "done")
    evals = [(m["step"], m["fd"], m["seconds"]) for m in msgs if m["t"] == "eval"]
    evals.append((done["step"], done["fd"], done["seconds"]))
    return dict(done=done, evals=evals, progress=[m for m in msgs if m["t"] == "progress"])
