"""test_transfer — a PyTorch model into steer: bench/torch_sagan.py (the PyTorch twin of fmnist32c)
trains two iterations and writes its weights under the tensor names of docs/checkpoint.md
(--save-steer); steer loads that file (no optimizer state, the spectral-norm vectors PyTorch kept)
and draws the same frames as PyTorch for the same latents and classes (`steer sample --latents`);
then a transfer-learning job starts from it with D's first two layers frozen (FreezeD) on 100
images of one class. Prints TAP."""
import json
import os
import subprocess
import sys
import tempfile

import numpy as np

import steer_harness as h

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
STEER = os.environ.get("STEER_BIN", "build/steer")


def main():
    tap = h.Tap()
    with tempfile.TemporaryDirectory(prefix="steer-transfer-") as d:
        w = os.path.join(d, "torch.safetensors")
        out = subprocess.run([sys.executable, os.path.join(ROOT, "bench", "torch_sagan.py"), "train",
                              "--config", "fmnist32c", "--iters", "2", "--out", d, "--samples", "10",
                              "--log-every", "1", "--save-steer", w], capture_output=True, text=True,
                             timeout=600)
        tap.ok(out.returncode == 0 and os.path.exists(w), "the PyTorch twin trains and writes steer's names",
               out.stderr[-1500:])
        # the same latents through PyTorch and through steer. PyTorch's eval-mode spectral norm
        # divides by u^T W v with both stored vectors, steer by u^T W normalize(W^T u); the two agree
        # once the power iteration has converged, so the exported model is run to convergence first
        sys.path.insert(0, os.path.join(ROOT, "bench"))
        import torch
        import torch_sagan as ts
        torch.manual_seed(3)
        gan = ts.GAN("fmnist32c")
        G = gan.G.train()
        with torch.no_grad():
            for _ in range(60):
                G(torch.randn(2, 128), torch.tensor([0, 1]))
        w2 = os.path.join(d, "converged.safetensors")
        ts.save_steer(gan, "fmnist32c", w2)
        G = gan.G.eval()
        rng = np.random.default_rng(5)
        z = rng.standard_normal((20, 128)).astype(np.float32)
        y = torch.arange(20) % 10
        with torch.inference_mode():
            want = G(torch.from_numpy(z), y).numpy()
        zp, got = os.path.join(d, "z.npy"), os.path.join(d, "steer.npy")
        np.save(zp, z)
        out = subprocess.run([STEER, "sample", "--ckpt", w2, "--latents", zp, "--out", got],
                             capture_output=True, text=True, timeout=120)
        tap.ok(out.returncode == 0, "steer sample --latents reads the PyTorch file", out.stderr[-800:])
        diff = float(np.abs(np.load(got) - want).max()) if out.returncode == 0 else 1.0
        tap.ok(diff < 1e-3, "steer draws PyTorch's frames for the same latents and classes (max |diff| "
               "< 1e-3)", diff)
        # transfer learning: start a job from it, D's first 2 layers frozen, 100 sneakers
        job = os.path.join(d, "job")
        os.makedirs(job)
        with open(os.path.join(job, "spec.json"), "w") as f:
            json.dump({"init": w, "steps": 4, "batch": 16, "save_every": 0, "eval_n": 0,
                       "classes": [7], "limit": 100, "set": {"freeze_d": 2}}, f)
        out = subprocess.run([STEER, "worker", "--dir", job], capture_output=True, timeout=600)
        tap.ok(out.returncode == 0 and os.path.exists(os.path.join(job, "final.safetensors")),
               "a transfer job starts from the PyTorch weights (FreezeD 2) on 100 images of one class",
               out.stderr.decode()[-1500:])
    return tap.done()


if __name__ == "__main__":
    sys.exit(main())
