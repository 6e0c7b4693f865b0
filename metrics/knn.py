"""One tiled k-nearest-neighbour engine for Precision, Recall, Density and Coverage.

Semantics are those of the reference ``prdc.compute_prdc`` (Naeem et al. 2020, clovaai), which the
SVS paper uses with Inception features and k = 5:

- radius of a sample = distance to its k-th nearest neighbour in its own set, taken as the
  (k+1)-th smallest distance of its row with the self-distance forced to exactly 0 (so duplicates
  count as neighbours at distance 0, as in the reference);
- precision = fraction of fakes inside at least one real ball      (d(r_i, f) <  rho_real_i)
- recall    = fraction of reals inside at least one fake ball      (d(r, f_j) <  rho_fake_j)
- density   = (1/k) * mean over fakes of the number of real balls containing the fake
- coverage  = fraction of reals whose nearest fake lies inside the real's own ball.

``strict=False`` switches the test to ``<=``, which is what stylegan2-ada-pytorch's ``pr50k3``
uses (there with fp16 distances on the GPU; here always exact).

Nothing of size N x N is ever held: distances are computed in tiles of rows x columns, the
within-set radii keep a running top-(k+1) per row and use symmetry (tile (i, j) also updates the
rows of j), and all four numbers come from one pass over the real x fake tiles.

Distance precision (never TF32 or fp16):
- ``mode='f64'`` (parity): float32 features are upcast per tile, d2 = (-2 a.b + |a|^2) + |b|^2 in
  float64 exactly as scikit-learn's ``euclidean_distances`` orders it, clamped at 0, rounded to
  float32, and the square root is taken in float64 and rounded to float32 (torch's float32 sqrt is
  not correctly rounded on every CPU). This reproduces ``prdc.compute_prdc`` bit for bit.
- ``mode='f32'`` (fast): the same formula in float32 on features centred by the joint mean, which
  removes the cancellation that offset (e.g. post-ReLU) features suffer; radii within about 1 ulp.
"""
import sys
import time

import numpy as np
import torch

import dnnlib

# ---------------------------------------------------------------------------------------------


def _as_tensor(x, name):
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(np.ascontiguousarray(x))
    if not isinstance(x, torch.Tensor) or x.ndim != 2:
        raise dnnlib.util.UserError(f'{name}: expected a 2-D array of features, got {getattr(x, "shape", type(x))}')
    if x.dtype != torch.float32:
        x = x.to(torch.float32)
    return x.contiguous()


def _check_finite(x, name):
    # Chunked, so a 50k x 2048 check does not allocate a second copy.
    for start in range(0, x.shape[0], 8192):
        if not torch.isfinite(x[start:start + 8192]).all():
            raise dnnlib.util.UserError(f'{name}: features contain NaN or Inf')


def _sum_f64(x):
    """Column sums in float64, a chunk of rows at a time (no float64 copy of the whole set)."""
    total = torch.zeros(x.shape[1], dtype=torch.float64)
    for start in range(0, x.shape[0], 8192):
        total += x[start:start + 8192].to(torch.float64).sum(dim=0).cpu()
    return total


class _TF32Off:
    """Forces exact float32 matmuls on CUDA for the duration (TF32 flips P/R decisions)."""

    def __enter__(self):
        self.saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32,
                      torch.get_float32_matmul_precision())
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        torch.set_float32_matmul_precision('highest')
        return self

    def __exit__(self, *exc):
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32, precision = self.saved
        torch.set_float32_matmul_precision(precision)
        return False


class _Progress:
    def __init__(self, verbose, total, every_s=5.0):
        self.verbose, self.total, self.every_s = verbose, total, every_s
        self.done = 0
        self.start = self.last = time.time()

    def step(self, what):
        self.done += 1
        now = time.time()
        if self.verbose and (now - self.last >= self.every_s or self.done == self.total):
            self.last = now
            print(f'knn: {what} tile {self.done}/{self.total}, {now - self.start:.1f} s', file=sys.stderr, flush=True)


class _TileDistances:
    """Squared distances between row blocks, in the chosen precision, on the chosen device."""

    def __init__(self, mode, device, center):
        assert mode in ('f64', 'f32')
        self.mode, self.device = mode, device
        self.center = None if center is None else center.to(device=device, dtype=torch.float32)
        self._storage = {}

    def _buffer(self, slot, shape, dtype):
        """A reused tile-sized buffer. Allocating a fresh 16-32 MB tensor per tile fragments the
        heap (glibc raises its mmap threshold after the first frees), which cost ~0.4 GiB of peak
        RSS at 50k x 50k; reusing buffers keeps the peak near features + one tile set."""
        numel = int(np.prod(shape))
        flat = self._storage.get(slot)
        if flat is None or flat.dtype != dtype or flat.numel() < numel:
            flat = torch.empty(numel, dtype=dtype, device=self.device)
            self._storage[slot] = flat
        return flat[:numel].view(shape)

    def prepare(self, block, slot='a'):
        """Upcast / centre one block of rows into buffer ``slot``; returns (vectors, squared norms).

        The vectors stay valid until ``prepare`` is called again with the same slot."""
        block = block.to(self.device, non_blocking=True)
        dtype = torch.float64 if self.mode == 'f64' else torch.float32
        x = self._buffer(slot, block.shape, dtype)
        if self.mode == 'f64':
            x.copy_(block)
        else:
            # Centring in float32 is as good as in float64: the rounding of the centre itself is a
            # common translation, and each difference is correctly rounded.
            torch.sub(block, self.center, out=x)
        squares = torch.mul(x, x, out=self._buffer('squares', x.shape, dtype))
        return x, squares.sum(dim=1)

    def squared(self, a, b):
        """float32 [rows, cols] of max(d2, 0), rounded from float64 in parity mode.

        The result lives in a reused buffer: use it before the next call."""
        xa, na = a
        xb, nb = b
        d2 = torch.mm(xa, xb.T, out=self._buffer('mm', (xa.shape[0], xb.shape[0]), xa.dtype))
        d2.mul_(-2).add_(na[:, None]).add_(nb[None, :])
        if self.mode == 'f64':
            d2 = self._buffer('d2', d2.shape, torch.float32).copy_(d2)
        return d2.clamp_min_(0)


def _sqrt_f32(d2):
    """Correctly rounded float32 square root (via float64)."""
    return d2.to(torch.float64).sqrt_().to(torch.float32)


def _d2_thresholds(radii, strict=True):
    """Per radius r the smallest float32 t with sqrt32(t) >= r (>  r when not strict), so that
    ``sqrt32(d2) < r`` (``<= r``) is exactly ``d2 < t``: no square roots of whole tiles."""
    r = radii.to(torch.float32)
    if not strict:  # d <= r  <=>  not (d >= nextup(r))
        r = torch.nextafter(r, torch.full_like(r, float('inf')))
    t = (r.to(torch.float64) ** 2).to(torch.float32)
    zero, inf = torch.zeros_like(t), torch.full_like(t, float('inf'))
    for _ in range(16):
        lower = torch.nextafter(t, zero)
        down = (t > 0) & (_sqrt_f32(lower) >= r)
        up = _sqrt_f32(t) < r
        if not (down.any() or up.any()):
            break
        t = torch.where(down, lower, torch.where(up, torch.nextafter(t, inf), t))
    assert (_sqrt_f32(t) >= r).all() and ((t == 0) | (_sqrt_f32(torch.nextafter(t, zero)) < r)).all()
    return t


def _tile_bounds(n, tile):
    return [(s, min(s + tile, n)) for s in range(0, n, tile)]


def _default_tile(device):
    return 2048 if torch.device(device).type == 'cpu' else 16384


# ---------------------------------------------------------------------------------------------


def knn_radii(features, k, mode='f64', device='cpu', tile=None, center=None, verbose=False, _dist=None):
    """Distance of every row to its k-th nearest other row, as float32 [N] (prdc semantics)."""
    x = _as_tensor(features, 'features')
    n = x.shape[0]
    if n < k + 1:
        raise dnnlib.util.UserError(f'features: k-NN with k={k} needs at least {k + 1} samples, got {n}')
    tile = tile or _default_tile(device)
    if _dist is None:
        if mode == 'f32' and center is None:
            center = _sum_f64(x) / n
        _dist = _TileDistances(mode, device, center)
    bounds = _tile_bounds(n, tile)
    kk = k + 1
    best = [None] * len(bounds)  # running k+1 smallest squared distances per row, float32
    progress = _Progress(verbose, len(bounds) * (len(bounds) + 1) // 2)

    def merge(i, cand):
        if best[i] is not None:
            cand = torch.cat([best[i], cand], dim=1)
        best[i] = torch.topk(cand, min(kk, cand.shape[1]), dim=1, largest=False, sorted=False).values

    with _TF32Off():
        for i, (ri0, ri1) in enumerate(bounds):
            a = _dist.prepare(x[ri0:ri1])
            for j in range(i, len(bounds)):
                cj0, cj1 = bounds[j]
                b = a if j == i else _dist.prepare(x[cj0:cj1], slot='b')
                d2 = _dist.squared(a, b)
                if j == i:
                    d2.fill_diagonal_(0)  # the self-distance is exactly 0, as scikit-learn forces it
                merge(i, torch.topk(d2, min(kk, d2.shape[1]), dim=1, largest=False, sorted=False).values)
                if j != i:
                    merge(j, torch.topk(d2, min(kk, d2.shape[0]), dim=0, largest=False, sorted=False).values.T)
                progress.step('radii')
        kth = torch.cat([b.max(dim=1).values for b in best])  # (k+1)-th smallest incl. self = k-th NN
        # sqrt is monotone, so the order statistic of the rounded square roots is the root of the
        # order statistic of the squared distances.
        return _sqrt_f32(kth).cpu()


def compute_prdc(real_features, fake_features, k=5, mode='f64', device='cpu', tile=None, strict=True,
                 verbose=False, return_radii=False):
    """Precision, recall, density and coverage of fake against real features (see module doc).

    real_features [Nr, D], fake_features [Nf, D]: float32 numpy arrays or tensors (kept where they
    are; only tiles move to ``device``). Returns an EasyDict with float ``precision``, ``recall``,
    ``density``, ``coverage`` (and the radii when ``return_radii``).
    """
    real = _as_tensor(real_features, 'real features')
    fake = _as_tensor(fake_features, 'fake features')
    if real.shape[1] != fake.shape[1]:
        raise dnnlib.util.UserError(f'features: real and fake dimensions differ ({real.shape[1]} vs {fake.shape[1]})')
    if mode not in ('f64', 'f32'):
        raise dnnlib.util.UserError(f'mode: expected f64 or f32, got {mode!r}')
    _check_finite(real, 'real features')
    _check_finite(fake, 'fake features')
    device = torch.device(device)
    tile = tile or _default_tile(device)

    center = None
    if mode == 'f32':  # one joint mean: distances are translation invariant, cancellation is not
        center = (_sum_f64(real) + _sum_f64(fake)) / (real.shape[0] + fake.shape[0])
    dist = _TileDistances(mode, device, center)

    radii_real = knn_radii(real, k, mode=mode, device=device, tile=tile, verbose=verbose, _dist=dist)
    radii_fake = knn_radii(fake, k, mode=mode, device=device, tile=tile, verbose=verbose, _dist=dist)

    nr, nf = real.shape[0], fake.shape[0]
    # Decisions are taken on squared distances against exact thresholds (see _d2_thresholds).
    t_real = _d2_thresholds(radii_real, strict).to(device)
    t_fake = _d2_thresholds(radii_fake, strict).to(device)
    fake_count = torch.zeros(nf, dtype=torch.int64, device=device)   # real balls containing each fake
    real_in_fake = torch.zeros(nr, dtype=torch.bool, device=device)  # real inside some fake ball
    real_min_d2 = torch.full((nr,), float('inf'), dtype=torch.float32, device=device)
    row_bounds, col_bounds = _tile_bounds(nr, tile), _tile_bounds(nf, tile)
    progress = _Progress(verbose, len(row_bounds) * len(col_bounds))

    with _TF32Off():
        for r0, r1 in row_bounds:
            a = dist.prepare(real[r0:r1])
            for c0, c1 in col_bounds:
                d2 = dist.squared(a, dist.prepare(fake[c0:c1], slot='b'))
                fake_count[c0:c1] += (d2 < t_real[r0:r1, None]).sum(dim=0)
                real_in_fake[r0:r1] |= (d2 < t_fake[None, c0:c1]).any(dim=1)
                torch.minimum(real_min_d2[r0:r1], d2.min(dim=1).values, out=real_min_d2[r0:r1])
                progress.step('real x fake')
    real_min = _sqrt_f32(real_min_d2).cpu()  # the nearest fake's distance (sqrt commutes with min)
    below = torch.lt if strict else torch.le

    # Final reductions with numpy, in the same dtypes as the reference, so the means match exactly.
    fake_count = fake_count.cpu().numpy()
    precision = (fake_count > 0).mean()
    recall = real_in_fake.cpu().numpy().mean()
    density = (1.0 / float(k)) * fake_count.mean()
    coverage = below(real_min.cpu(), radii_real).numpy().mean()
    result = dnnlib.EasyDict(precision=float(precision), recall=float(recall), density=float(density),
                             coverage=float(coverage), k=k, mode=mode, strict=strict, num_real=nr, num_fake=nf)
    if return_radii:
        result.radii_real = radii_real.numpy()
        result.radii_fake = radii_fake.numpy()
    return result
