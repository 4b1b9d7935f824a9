"""example.py — streams 8 frames of a latent walk from `steer serve`, saves them as PNG files and
prints what came: `/usr/bin/python3 clients/python/example.py [URL] [OUT_DIR]`
(URL default ws://127.0.0.1:8080/ws, OUT_DIR default walk_frames)."""
import asyncio
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from steer_client import connect  # noqa: E402


async def main(url, out_dir, n=8):
    os.makedirs(out_dir, exist_ok=True)
    async with connect(url, user="example") as c:
        model = c.welcome["model"]
        print(f"session {c.welcome['session']} as {c.welcome['user']}: model {model['name']} "
              f"v{model['version']}, {model['width']}x{model['height']}x{model['channels']}, "
              f"{model['classes']} classes")
        t0 = time.monotonic()
        await c.stream(1, mode="walk", format="png", n=n)
        total = 0
        for _ in range(n):
            f = await c.next_frame(timeout=30)
            path = os.path.join(out_dir, f"walk_{f.seq:02d}.png")
            with open(path, "wb") as out:
                out.write(f.data)
            total += len(f.data)
            print(f"frame {f.frame} seq {f.seq} class {f.cls}: {len(f.data)} bytes -> {path}")
        dt = time.monotonic() - t0
        sent = await c.stop(1)
        print(f"{n} frames, {total} bytes in {dt:.3f} s ({n / dt:.1f} frames/s); server says {sent} sent")


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1] if len(sys.argv) > 1 else "ws://127.0.0.1:8080/ws",
                     sys.argv[2] if len(sys.argv) > 2 else "walk_frames"))
