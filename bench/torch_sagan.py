#!/usr/bin/python3
"""torch_sagan.py — a PyTorch twin of steer's self-attention SN-GAN (the PyTorch baseline).

It mirrors the models of /work/shared/DESIGN.md, section "Models", layer for layer, so that
`make bench` can set steer's C kernels beside PyTorch (Debian's python3-torch, CPU) on the same
model and the same training iteration:

  fmnist32   G: z(128) -> SN-linear -> 4x4x(4ch), LReLU(0.2), PixelNorm
                -> 3 x [nearest-up x2 -> SN-conv3x3 -> LReLU(0.2) -> PixelNorm]
                   channels 4ch -> 2ch -> ch -> ch/2, self-attention after the 16x16 stage
                -> SN-conv3x3 (ch/2 -> 1) -> tanh                       (32x32 in [-1, 1])
             D: SN-conv3x3 1->ch/2 -> LReLU(0.1) -> SN-conv4x4/2 -> ch (16x16) -> LReLU
                -> self-attention -> SN-conv4x4/2 -> 2ch -> LReLU -> SN-conv4x4/2 -> 4ch (4x4)
                -> LReLU -> flatten -> SN-linear -> 1
  fmnist32c  the class-conditional twin: G adds a learned class embedding (10 x z) to z; D is a
             projection discriminator, output + <SN-embed(y), h>, h the flattened 4x4x4ch features.

Self-attention (SAGAN): f, g = SN-conv1x1 C->C/8, h = SN-conv1x1 C->C/2, o = SN-conv1x1 C/2->C, no
bias; s[j][i] = f_i . g_j, softmax over i for each j, o_j = sum_i attn[j][i] h_i,
out = x + gamma * o(...), gamma a learned scalar starting at 0. Every other conv/linear has a bias.
Spectral norm is torch.nn.utils.spectral_norm: one power iteration per training-mode forward
(gradient through sigma, u and v held constant); in eval mode no power iteration is done.
Hinge loss, Adam betas (0, 0.9), lr G 1e-4 / D 4e-4, batch 64, ch 32, z 128.
Weights use PyTorch's default initialisation (the speed comparison does not depend on it).

One training iteration (the C side mirrors it exactly):
  D step: z ~ N(0, I); fake = G(z).detach();
          loss_D = mean(relu(1 - D(real))) + mean(relu(1 + D(fake))); backward; Adam on D.
  G step: new z ~ N(0, I); loss_G = -mean(D(G(z))) with D's parameters frozen; backward; Adam on G.
(So per iteration PyTorch runs D's power iteration 3 times and G's twice: once per training forward.)

Data: Fashion-MNIST IDX gzip files from /usr/share/datasets/fashion-mnist (no torchvision), padded
28 -> 32 with -1 (2 px each side) after scaling x / 127.5 - 1; shuffled batches, labels for fmnist32c.
`bench --data DIR` reads another folder, the test set (t10k-*) when it holds no training set.

Usage (run with Debian's interpreter, /usr/bin/python3, which has torch):
  /usr/bin/python3 bench/torch_sagan.py bench [--iters N] [--warmup N] [--batch 64] [--data DIR]
      prints `name value` lines: torch_threads, torch_train_images_per_s (fmnist32, batch 64, a
      full D+G iteration on real batches held in memory), torch_gen_b1_images_per_s,
      torch_gen_b64_images_per_s (G forward, eval mode, under torch.inference_mode).
  python3 bench/torch_sagan.py bench --device cuda [--batch N] [--data DIR] [--tf32]
      the same on the GPU, as `steer bench --device cuda` measures steer (docs/gpu.md,
      "Measuring speed on the GPU"): PyTorch eager (no torch.compile), FP32 unless --tf32
      (both of PyTorch's switches, cuBLAS's and cuDNN's, set and printed, since cuDNN's defaults
      to TF32), cuDNN's algorithm search on (torch.backends.cudnn.benchmark; steer times its
      algorithms too), synchronized before every clock read; prints torch_train_b{N}_images_per_s
      and torch_gen_b{N}_images_per_s (G forward with the images copied to the host, as steer's
      serving forward does).
  /usr/bin/python3 bench/torch_sagan.py train --config fmnist32|fmnist32c --iters N --seed S \
      --out DIR [--log-every K]
      trains and writes DIR/samples.npy: 10000 samples of the final G, float32 (N, 1, 32, 32) in
      [-1, 1] (fmnist32c: 1000 per class, classes in order).
"""
import argparse
import gzip
import os
import sys
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.utils import spectral_norm

DATA_DIR = "/usr/share/datasets/fashion-mnist"
CONFIGS = {
    "fmnist32": dict(ch=32, z_dim=128, n_classes=0, res=32, img_ch=1),
    "fmnist32c": dict(ch=32, z_dim=128, n_classes=10, res=32, img_ch=1),
}
BATCH = 64
LR_G, LR_D, BETAS = 1e-4, 4e-4, (0.0, 0.9)


# ---------------------------------------------------------------------------------------- model

def sn_conv(cin, cout, k, stride=1, pad=0, bias=True):
    return spectral_norm(nn.Conv2d(cin, cout, k, stride, pad, bias=bias))


class PixelNorm(nn.Module):
    def forward(self, x):  # x / sqrt(mean over channels of x^2 + 1e-8)
        return x * torch.rsqrt(x.pow(2).mean(dim=1, keepdim=True) + 1e-8)


class SelfAttention(nn.Module):
    """SAGAN block: out = x + gamma * Wo (h softmax(f^T g)^T)."""

    def __init__(self, c):
        super().__init__()
        self.f = sn_conv(c, c // 8, 1, bias=False)
        self.g = sn_conv(c, c // 8, 1, bias=False)
        self.h = sn_conv(c, c // 2, 1, bias=False)
        self.o = sn_conv(c // 2, c, 1, bias=False)
        self.gamma = nn.Parameter(torch.zeros(()))

    def forward(self, x):
        b, c, hh, ww = x.shape
        n = hh * ww
        f = self.f(x).view(b, c // 8, n)
        g = self.g(x).view(b, c // 8, n)
        h = self.h(x).view(b, c // 2, n)
        s = torch.bmm(g.transpose(1, 2), f)            # (B, N_j, N_i): s[j][i] = f_i . g_j
        attn = F.softmax(s, dim=-1)                     # softmax over i for each j
        o = torch.bmm(h, attn.transpose(1, 2))          # o_j = sum_i attn[j][i] h_i, (B, C/2, N)
        return x + self.gamma * self.o(o.view(b, c // 2, hh, ww))


class Generator(nn.Module):
    def __init__(self, ch=32, z_dim=128, n_classes=0, res=32, img_ch=1):
        super().__init__()
        assert res == 32
        self.ch, self.z_dim, self.n_classes = ch, z_dim, n_classes
        self.embed = nn.Embedding(n_classes, z_dim) if n_classes else None
        self.fc = spectral_norm(nn.Linear(z_dim, 4 * 4 * 4 * ch))
        chans = [4 * ch, 2 * ch, ch, ch // 2]
        self.convs = nn.ModuleList(sn_conv(chans[i], chans[i + 1], 3, 1, 1) for i in range(3))
        self.attn = SelfAttention(ch)                   # after the 16x16 stage (ch channels)
        self.out = sn_conv(ch // 2, img_ch, 3, 1, 1)
        self.pn = PixelNorm()

    def forward(self, z, y=None):
        if self.embed is not None:
            z = z + self.embed(y)
        x = self.fc(z).view(z.shape[0], 4 * self.ch, 4, 4)
        x = self.pn(F.leaky_relu(x, 0.2))
        for i, conv in enumerate(self.convs):
            x = F.interpolate(x, scale_factor=2, mode="nearest")
            x = self.pn(F.leaky_relu(conv(x), 0.2))
            if i == 1:                                  # 16x16
                x = self.attn(x)
        return torch.tanh(self.out(x))


class Discriminator(nn.Module):
    def __init__(self, ch=32, z_dim=128, n_classes=0, res=32, img_ch=1):
        super().__init__()
        assert res == 32
        self.c1 = sn_conv(img_ch, ch // 2, 3, 1, 1)     # 32x32
        self.c2 = sn_conv(ch // 2, ch, 4, 2, 1)         # 16x16
        self.attn = SelfAttention(ch)
        self.c3 = sn_conv(ch, 2 * ch, 4, 2, 1)          # 8x8
        self.c4 = sn_conv(2 * ch, 4 * ch, 4, 2, 1)      # 4x4
        nfeat = 4 * ch * 4 * 4
        self.fc = spectral_norm(nn.Linear(nfeat, 1))
        self.embed = spectral_norm(nn.Embedding(n_classes, nfeat)) if n_classes else None

    def forward(self, x, y=None):
        x = F.leaky_relu(self.c1(x), 0.1)
        x = F.leaky_relu(self.c2(x), 0.1)
        x = self.attn(x)
        x = F.leaky_relu(self.c3(x), 0.1)
        x = F.leaky_relu(self.c4(x), 0.1)
        h = x.flatten(1)
        out = self.fc(h).squeeze(1)
        if self.embed is not None:                      # projection discriminator
            out = out + (self.embed(y) * h).sum(dim=1)
        return out


class GAN:
    def __init__(self, config, device="cpu"):
        cfg = CONFIGS[config]
        self.cfg, self.device = cfg, torch.device(device)
        self.G, self.D = Generator(**cfg).to(self.device), Discriminator(**cfg).to(self.device)
        self.opt_g = torch.optim.Adam(self.G.parameters(), lr=LR_G, betas=BETAS)
        self.opt_d = torch.optim.Adam(self.D.parameters(), lr=LR_D, betas=BETAS)
        self.G.train()
        self.D.train()

    def _labels(self, b):
        if not self.cfg["n_classes"]:
            return None
        return torch.randint(0, self.cfg["n_classes"], (b,), device=self.device)

    def step(self, real, y_real=None):
        """One training iteration: a D step then a G step. Returns (loss_D, loss_G) tensors."""
        G, D = self.G, self.D
        b, zd = real.shape[0], self.cfg["z_dim"]
        # D step
        for p in D.parameters():
            p.requires_grad_(True)
        z, yf = torch.randn(b, zd, device=self.device), self._labels(b)
        fake = G(z, yf).detach()
        loss_d = F.relu(1 - D(real, y_real)).mean() + F.relu(1 + D(fake, yf)).mean()
        self.opt_d.zero_grad(set_to_none=True)
        loss_d.backward()
        self.opt_d.step()
        # G step (D frozen: its parameter gradients are not computed)
        for p in D.parameters():
            p.requires_grad_(False)
        z, yf = torch.randn(b, zd, device=self.device), self._labels(b)
        loss_g = -D(G(z, yf), yf).mean()
        self.opt_g.zero_grad(set_to_none=True)
        loss_g.backward()
        self.opt_g.step()
        return loss_d.detach(), loss_g.detach()


# ----------------------------------------------------------------------------------------- data

def _read_idx(path):
    with gzip.open(path, "rb") as fh:
        raw = fh.read()
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def load_fashion_mnist(split="train", data_dir=DATA_DIR):
    """Returns images float32 (N, 1, 32, 32) in [-1, 1] (padded with -1) and labels int64 (N,)."""
    pre = "train" if split == "train" else "t10k"
    imgs = _read_idx(os.path.join(data_dir, f"{pre}-images-idx3-ubyte.gz"))
    labels = _read_idx(os.path.join(data_dir, f"{pre}-labels-idx1-ubyte.gz"))
    x = imgs.astype(np.float32) / 127.5 - 1.0
    x = np.pad(x, ((0, 0), (2, 2), (2, 2)), constant_values=-1.0)[:, None]
    return np.ascontiguousarray(x), labels.astype(np.int64)


def load_bench_images(data_dir):
    """The training set's images from data_dir, or the test set's when the folder holds only
    those (the lent GPU machines get the 10,000 t10k images, scripts/gpu_check.sh). Returns
    (images, split)."""
    has_train = os.path.exists(os.path.join(data_dir, "train-images-idx3-ubyte.gz"))
    split = "train" if has_train else "t10k"
    return load_fashion_mnist(split, data_dir)[0], split


class Batches:
    """Endless shuffled batches (a fresh permutation each epoch, last partial batch dropped)."""

    def __init__(self, x, y, batch, seed):
        self.x, self.y = torch.from_numpy(x), torch.from_numpy(y)
        self.batch, self.rng = batch, np.random.default_rng(seed)
        self.perm, self.pos = None, len(x)

    def next(self):
        if self.pos + self.batch > len(self.x):
            self.perm, self.pos = torch.from_numpy(self.rng.permutation(len(self.x))), 0
        idx = self.perm[self.pos:self.pos + self.batch]
        self.pos += self.batch
        return self.x[idx], self.y[idx]


# ---------------------------------------------------------------------------------------- bench

def _timed(fn, warmup, iters, seconds, sync=lambda: None):
    """Runs fn warmup times, then iters times (or, with iters 0, until `seconds` have passed,
    at least 3 runs). sync() runs after the warm-up and after each timed run, before the clock is
    read (torch.cuda.synchronize on the GPU, whose work is queued asynchronously). Returns
    (runs, elapsed seconds)."""
    for _ in range(warmup):
        fn()
    sync()
    n, t0 = 0, time.perf_counter()
    while True:
        fn()
        sync()
        n += 1
        el = time.perf_counter() - t0
        if (iters and n >= iters) or (not iters and n >= 3 and el >= seconds):
            return n, el


def set_tf32(on):
    """TF32 for cuBLAS's matrix products and cuDNN's convolutions, on or off, through the API this
    PyTorch has. Returns the `name value` pairs PyTorch reports afterwards. cuDNN's switch defaults
    to TF32, so full FP32 must be asked for. PyTorch >= 2.9 has fp32_precision ('ieee' is FP32) and
    raises when it is mixed with the older allow_tf32 flags, so only one API is used; every cuDNN
    level (cudnn, cudnn.conv, cudnn.rnn) is set alike, since a top-level setting does not reach conv
    and a conv/rnn mismatch raises too (pytorch/pytorch#179445)."""
    # A failure is reported and the run goes on (a lent GPU's minutes are scarce): the values read
    # back, printed beside the figures, say what was measured.
    def read(get):
        try:
            return get()
        except Exception as e:  # noqa: BLE001 — any failure is reported, not raised
            return f"unreadable({type(e).__name__})"

    new_api = torch.__version__ >= "2.9"  # a TorchVersion: compared as a version
    try:
        if new_api:
            mode = "tf32" if on else "ieee"
            for mod in (torch.backends.cuda.matmul, torch.backends.cudnn,
                        torch.backends.cudnn.conv, torch.backends.cudnn.rnn):
                mod.fp32_precision = mode
        else:
            torch.backends.cuda.matmul.allow_tf32 = bool(on)
            torch.backends.cudnn.allow_tf32 = bool(on)
    except Exception as e:  # noqa: BLE001
        print(f"torch_sagan.py bench: setting TF32 {'on' if on else 'off'} failed: {e!r}",
              file=sys.stderr)
    matmul, cudnn = torch.backends.cuda.matmul, torch.backends.cudnn
    if new_api:
        return [("torch_matmul_fp32_precision", read(lambda: matmul.fp32_precision)),
                ("torch_cudnn_conv_fp32_precision", read(lambda: cudnn.conv.fp32_precision))]
    return [("torch_matmul_allow_tf32", read(lambda: int(matmul.allow_tf32))),
            ("torch_cudnn_allow_tf32", read(lambda: int(cudnn.allow_tf32)))]


def bench_setup_cuda(args):
    """Checks the GPU and sets the math: the lines saying which, or exits 1 without a GPU."""
    if not torch.cuda.is_available():
        print("torch_sagan.py bench: --device cuda: PyTorch sees no GPU "
              f"(torch {torch.__version__}, CUDA {torch.version.cuda})", file=sys.stderr)
        sys.exit(1)
    lines = [("torch_version", torch.__version__), ("torch_device", torch.cuda.get_device_name()),
             ("torch_tf32", int(args.tf32))]
    lines += set_tf32(args.tf32)
    torch.backends.cudnn.benchmark = True  # times cuDNN's algorithms per shape, as steer does
    lines.append(("torch_cudnn_benchmark", int(torch.backends.cudnn.benchmark)))
    return lines


def cmd_bench(args):
    cuda = args.device == "cuda"
    if args.tf32 and not cuda:
        print("torch_sagan.py bench: --tf32 is a GPU setting (--device cuda)", file=sys.stderr)
        sys.exit(2)
    for name, value in bench_setup_cuda(args) if cuda else []:
        print(f"{name} {value}", flush=True)
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    torch.manual_seed(args.seed)
    gan = GAN("fmnist32", args.device)
    B = args.batch
    x, split = load_bench_images(args.data)
    # Real batches held in memory (on the device): a fixed set of pre-shuffled, contiguous batches.
    rng = np.random.default_rng(args.seed)
    nb = max(1, min(32, len(x) // B))
    idx = rng.permutation(len(x))[: nb * B]
    if len(idx) < B:  # fewer images than one batch: draw with replacement
        idx = rng.integers(0, len(x), B)
    real = [torch.from_numpy(np.ascontiguousarray(x[idx[i * B:(i + 1) * B]])).to(gan.device)
            for i in range(nb)]
    k = [0]

    def train_once():
        gan.step(real[k[0] % nb])
        k[0] += 1

    n, el = _timed(train_once, args.warmup, args.iters, args.train_seconds, sync)
    train_ips = n * B / el
    print(f"# train: {n} iterations of batch {B} in {el:.2f} s ({split} images)", file=sys.stderr)

    G = gan.G.eval()
    res = {}
    for b in ((B,) if cuda else (1, 64)):
        z = torch.randn(b, CONFIGS["fmnist32"]["z_dim"], device=gan.device)

        def gen_once():
            with torch.inference_mode():
                G(z).cpu()  # the images on the host, as a server needs them (a no-op on the CPU)

        n, el = _timed(gen_once, max(args.warmup, 3), args.iters, args.gen_seconds, sync)
        res[b] = n * b / el
        print(f"# gen b{b}: {n} forwards in {el:.2f} s", file=sys.stderr)

    if cuda:
        print(f"torch_train_b{B}_images_per_s {train_ips:.2f}")
        print(f"torch_gen_b{B}_images_per_s {res[B]:.2f}")
        return
    print(f"torch_threads {torch.get_num_threads()}")
    print(f"torch_train_images_per_s {train_ips:.2f}")
    print(f"torch_gen_b1_images_per_s {res[1]:.2f}")
    print(f"torch_gen_b64_images_per_s {res[64]:.2f}")


# ---------------------------------------------------------------------------------------- train

# ------------------------------------------------------------------------ steer's checkpoint names

def steer_name(net, name):
    """The name docs/checkpoint.md gives this twin's parameter `name` of `net` ("G" or "D")."""
    if net == "G":
        for i in range(3):
            name = name.replace(f"convs.{i}.", f"blocks.{i}.conv.")
    else:
        name = name.replace("c1.", "conv0.", 1) if name.startswith("c1.") else name
        for k, c in enumerate(("c2.", "c3.", "c4.")):
            if name.startswith(c):
                name = f"blocks.{k}.conv." + name[len(c):]
    return f"{net}.{name}"


def save_steer(gan, config, path):
    """Writes G's and D's weights (with spectral norm's weight_orig / weight_u / weight_v) as a
    safetensors file steer reads (`steer train --resume`, a job's `init`, `steer sample`): the
    tensor names and metadata of docs/checkpoint.md, no optimizer state. Written by hand (the format
    is a u64 header length, a JSON header and raw little-endian tensors), so that no package beyond
    torch is needed."""
    import json
    import struct
    cfg = CONFIGS[config]
    tensors = {}
    for net, module in (("G", gan.G), ("D", gan.D)):
        for name, t in module.state_dict().items():
            a = t.detach().cpu().float().numpy()
            if name.endswith("gamma"):
                a = a.reshape(1)
            tensors[steer_name(net, name)] = np.ascontiguousarray(a, dtype="<f4")
    meta = {"format": "steer.sagan.v1", "config": config, "ch": str(cfg["ch"]),
            "z_dim": str(cfg["z_dim"]), "img": str(cfg["res"]), "channels": str(cfg["img_ch"]),
            "n_classes": str(cfg["n_classes"]), "attn_res": "16"}
    header, offset = {"__metadata__": meta}, 0
    for name in sorted(tensors):
        a = tensors[name]
        header[name] = {"dtype": "F32", "shape": list(a.shape), "data_offsets": [offset, offset + a.nbytes]}
        offset += a.nbytes
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for name in sorted(tensors):
            f.write(tensors[name].tobytes())


def cmd_train(args):
    torch.manual_seed(args.seed)
    np.random.seed(args.seed)
    gan = GAN(args.config)
    cond = gan.cfg["n_classes"] > 0
    x, y = load_fashion_mnist("train")
    data = Batches(x, y, BATCH, args.seed)
    os.makedirs(args.out, exist_ok=True)
    print(f"# config {args.config} iters {args.iters} seed {args.seed} "
          f"threads {torch.get_num_threads()} torch {torch.__version__}", flush=True)
    t0 = tlast = time.perf_counter()
    ilast = 0
    for it in range(1, args.iters + 1):
        xr, yr = data.next()
        ld, lg = gan.step(xr, yr if cond else None)
        if it % args.log_every == 0 or it == args.iters:
            now = time.perf_counter()
            ips = (it - ilast) * BATCH / (now - tlast)
            avg = (now - t0) / it
            eta = avg * (args.iters - it)
            print(f"iter {it} loss_D {ld.item():.4f} loss_G {lg.item():.4f} "
                  f"images/s {ips:.1f} eta {eta:.0f}s", flush=True)
            if not (np.isfinite(ld.item()) and np.isfinite(lg.item())):
                print("non-finite loss", file=sys.stderr)
                sys.exit(1)
            tlast, ilast = now, it
    train_s = time.perf_counter() - t0

    # 10000 samples of the final G (eval mode: spectral norm without a power iteration).
    G = gan.G.eval()
    n, zd = args.samples, gan.cfg["z_dim"]
    gen = torch.Generator().manual_seed(args.seed + 1)
    out = np.empty((n, gan.cfg["img_ch"], gan.cfg["res"], gan.cfg["res"]), np.float32)
    labels = torch.arange(n) // (n // gan.cfg["n_classes"]) if cond else None
    with torch.inference_mode():
        for s in range(0, n, 500):
            z = torch.randn(min(500, n - s), zd, generator=gen)
            yl = labels[s:s + len(z)] if cond else None
            out[s:s + len(z)] = G(z, yl).numpy()
    np.save(os.path.join(args.out, "samples.npy"), out)
    if args.save_steer:
        save_steer(gan, args.config, args.save_steer)
        print(f"weights -> {args.save_steer} (steer's checkpoint names)", flush=True)
    if cond:
        np.save(os.path.join(args.out, "labels.npy"), labels.numpy().astype(np.int64))
    print(f"done: {args.iters} iterations in {train_s:.1f} s "
          f"({args.iters * BATCH / train_s:.1f} images/s), total {time.perf_counter() - t0:.1f} s, "
          f"samples -> {os.path.join(args.out, 'samples.npy')}", flush=True)


def _batch(text):
    """argparse type of --batch: a whole number in [1, 4096], steer bench's range."""
    try:
        v = int(text)
    except ValueError:
        v = 0
    if not 1 <= v <= 4096:
        raise argparse.ArgumentTypeError(f"expected an integer in [1, 4096], got '{text}'")
    return v


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("bench", help="speed figures of the fmnist32 twin")
    b.add_argument("--iters", type=int, default=0,
                   help="timed runs per measurement (default 0: as many as fit the time budget)")
    b.add_argument("--warmup", type=int, default=3)
    b.add_argument("--train-seconds", type=float, default=20.0)
    b.add_argument("--gen-seconds", type=float, default=8.0)
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                   help="where to measure (default cpu; cuda: the GPU, lines named by --batch)")
    b.add_argument("--batch", type=_batch, default=BATCH, help="training batch (default 64)")
    b.add_argument("--data", default=DATA_DIR, metavar="DIR",
                   help="Fashion-MNIST IDX gz folder (default Debian's); the test set if it has "
                        "no training set")
    b.add_argument("--tf32", action="store_true",
                   help="on the GPU, TF32 matrix products and convolutions (default full FP32)")
    t = sub.add_parser("train", help="train a config and write DIR/samples.npy")
    t.add_argument("--config", choices=sorted(CONFIGS), required=True)
    t.add_argument("--iters", type=int, required=True)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--out", required=True)
    t.add_argument("--log-every", type=int, default=100)
    t.add_argument("--samples", type=int, default=10000, help="samples written to samples.npy")
    t.add_argument("--save-steer", metavar="FILE",
                   help="also write the trained weights as a steer checkpoint (docs/checkpoint.md)")
    args = ap.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    print(f"# torch {torch.__version__} threads {torch.get_num_threads()}", file=sys.stderr)
    {"bench": cmd_bench, "train": cmd_train}[args.cmd](args)


if __name__ == "__main__":
    main()
