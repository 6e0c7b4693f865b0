"""Training statistics: ``report`` scalars anywhere, ``Collector`` reduces them per tick.

Semantics follow NVIDIA's ``torch_utils.training_stats``: every reported value contributes its
moments (count, sum, sum of squares, accumulated in float64) under a name; a ``Collector`` gathers
the names matching its regex, sums them over devices and processes (``torch.distributed``) on
``update()``, and exposes ``num``/``mean``/``std``/``as_dict()`` for the interval since the previous
update. ``as_dict()`` is what a ``stats.jsonl`` line holds: ``{name: {num, mean, std}}``.

Difference from NVIDIA (on purpose): each collector keeps its own pending sums that ``update()``
resets, instead of subtracting two ever-growing totals. The interval values are then exact sums of
the values reported in that interval, which makes them bit-identical after an exact resume
(``state_dict``/``load_state_dict`` carry the pending sums).
"""
import re
import weakref

import numpy as np
import torch

import dnnlib

_num_moments = 3                 # [count, sum, sum of squares]
_reduce_dtype = torch.float64    # accumulation dtype (exact for counts and for sign sums)
_rank = 0
_sync_device = None              # device used for the cross-process all-reduce; None = single process
_collectors = weakref.WeakSet()  # live collectors; report() feeds the matching ones


def init_multiprocessing(rank, sync_device):
    """Call once per process after ``torch.distributed.init_process_group``.

    ``sync_device``: the device the all-reduce runs on (a CUDA device for NCCL, ``cpu`` for gloo);
    ``None`` disables cross-process reduction.
    """
    global _rank, _sync_device
    _rank = rank
    _sync_device = sync_device


def _moments_of(value):
    if not isinstance(value, torch.Tensor):
        value = torch.as_tensor(np.asarray(value, dtype=np.float64))
    elems = value.detach().flatten().to(_reduce_dtype)
    return torch.stack([torch.ones_like(elems).sum(), elems.sum(), elems.square().sum()])


@torch.no_grad()
def report(name, value):
    """Record ``value`` (scalar, array or tensor; all elements count) under ``name``; returns ``value``.

    Works on any device without a host sync. Every process should report the same names (possibly
    with empty values) so that the cross-process reduction lines up.
    """
    targets = [c for c in list(_collectors) if c._matches(name)]
    if not targets:
        return value
    moments = _moments_of(value)
    for collector in targets:
        collector._add(name, moments)
    return value


def report0(name, value):
    """Like ``report``, but only rank 0's value counts (other ranks report an empty value)."""
    report(name, value if _rank == 0 else [])
    return value


class Collector:
    """Collects the reported statistics whose names match ``regex`` (full match)."""

    def __init__(self, regex='.*', keep_previous=True):
        self._regex = re.compile(regex)
        self._keep_previous = keep_previous
        self._match_cache = dict()
        self._pending = dict()   # name -> {device: moments tensor}
        self._moments = dict()   # name -> float64 CPU moments of the last interval
        _collectors.add(self)

    def _matches(self, name):
        hit = self._match_cache.get(name)
        if hit is None:
            hit = self._match_cache[name] = bool(self._regex.fullmatch(name))
        return hit

    def _add(self, name, moments):
        per_device = self._pending.setdefault(name, dict())
        acc = per_device.get(moments.device)
        if acc is None:
            per_device[moments.device] = moments.clone()
        else:
            acc.add_(moments)

    def names(self):
        """Names seen so far (sorted), including those with no value in the last interval."""
        return sorted(set(self._pending) | set(self._moments))

    def _local_sums(self, names):
        device = _sync_device if _sync_device is not None else torch.device('cpu')
        rows = []
        for name in names:
            total = torch.zeros([_num_moments], dtype=_reduce_dtype, device=device)
            for acc in self._pending.get(name, dict()).values():
                total.add_(acc.to(device))
            rows.append(total)
        return torch.stack(rows) if rows else torch.zeros([0, _num_moments], dtype=_reduce_dtype, device=device)

    @staticmethod
    def _all_reduce(sums):
        if _sync_device is not None and torch.distributed.is_available() and torch.distributed.is_initialized() \
                and torch.distributed.get_world_size() > 1:
            torch.distributed.all_reduce(sums)
        return sums

    def update(self):
        """Close the interval: sum pending moments over devices and processes, then reset them."""
        names = self.names()
        sums = self._all_reduce(self._local_sums(names)).cpu()
        if not self._keep_previous:
            self._moments.clear()
        for name, row in zip(names, sums):
            if row[0] > 0 or not self._keep_previous or name not in self._moments:
                self._moments[name] = row
        self._pending.clear()

    def num(self, name):
        m = self._moments.get(name)
        return 0 if m is None else int(m[0])

    def mean(self, name):
        m = self._moments.get(name)
        if m is None or m[0] == 0:
            return float('nan')
        return float(m[1] / m[0])

    def std(self, name):
        m = self._moments.get(name)
        if m is None or m[0] == 0 or not np.isfinite(float(m[1])):
            return float('nan')
        if m[0] == 1:
            return 0.0
        mean = float(m[1] / m[0])
        raw_var = float(m[2] / m[0])
        return float(np.sqrt(max(raw_var - mean ** 2, 0)))

    def as_dict(self):
        """``{name: EasyDict(num, mean, std)}`` of the last interval (what a stats.jsonl line holds)."""
        out = dnnlib.EasyDict()
        for name in sorted(self._moments):
            out[name] = dnnlib.EasyDict(num=self.num(name), mean=self.mean(name), std=self.std(name))
        return out

    def __getitem__(self, name):
        return self.mean(name)

    # Exact resume: the pending sums, reduced over processes (call on every rank; restore on rank 0 only
    # so the next reduction counts them once).
    def state_dict(self):
        names = self.names()
        sums = self._all_reduce(self._local_sums(names)).cpu()
        pending = {name: row.clone() for name, row in zip(names, sums) if name in self._pending}
        return dict(pending=pending, moments={k: v.clone() for k, v in self._moments.items()})

    def load_state_dict(self, state, restore_pending=True):
        self._pending.clear()
        self._moments = {k: v.clone().to(_reduce_dtype) for k, v in state.get('moments', dict()).items()}
        if restore_pending:
            for name, row in state.get('pending', dict()).items():
                self._pending[name] = {row.device: row.clone().to(_reduce_dtype)}
