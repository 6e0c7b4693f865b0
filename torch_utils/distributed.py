"""Multi-process coordination of the training loop: per-node leaders, and one failure stops every rank.

* ``node_leader_first``: the body runs first on the local rank 0 of every node (its downloads fill
  that node's cache), then, after a barrier, on the node's other ranks (cache hits). So a teacher,
  the LPIPS weights or a detector is fetched once per node, never by every rank at once. Multi-node
  runs (``torchrun --nnodes N``) keep one cache per node; ``LOCAL_RANK`` names the node's leader.
* ``stop_all_ranks_on_error``: when a rank raises (e.g. rank 0 in its snapshot or metric work), it
  posts the message in the process group's key-value store; a watcher thread on every other rank
  sees it within ``POLL_S``, prints it and ends that process, which would otherwise wait in its next
  collective until the NCCL/gloo timeout (30 minutes by default). Any launcher: spawn, torchrun,
  one process per node.
"""
import contextlib
import functools
import os
import sys
import threading

import torch

POLL_S = 0.25         # how often the watcher looks for a failure of another rank
ACK_WAIT_S = 5.0      # how long a failing rank waits for the others to read its message
_ABORT_KEY = 'training_loop/abort'
_ACK_KEY = 'training_loop/abort_acks'


def is_multiprocess():
    return torch.distributed.is_available() and torch.distributed.is_initialized() and torch.distributed.get_world_size() > 1


def local_rank(rank):
    """This process's rank on its node: ``LOCAL_RANK`` under torchrun, else ``rank`` (one node)."""
    return int(os.environ.get('LOCAL_RANK', rank))


@contextlib.contextmanager
def node_leader_first(rank, enabled=True):
    """Run the body on each node's local rank 0, then on the others. Every rank must enter (or
    pass ``enabled=False``); the body must not hold collectives. A leader that raises does not
    reach the barrier: the others are stopped by ``stop_all_ranks_on_error``."""
    active = enabled and is_multiprocess()
    leader = local_rank(rank) == 0
    if active and not leader:
        torch.distributed.barrier()
    yield
    if active and leader:
        torch.distributed.barrier()


def _one_line(exc):
    text = ' '.join(str(exc).split()) or type(exc).__name__
    return text if isinstance(exc, Exception) and type(exc).__name__ == 'UserError' else f'{type(exc).__name__}: {text}'


class _AbortWatch:
    """A daemon thread that ends this process when another rank posts a failure."""

    def __init__(self, store, rank, world_size):
        self.store, self.rank, self.world_size = store, rank, world_size
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name='abort-watch', daemon=True)
        self._thread.start()

    @classmethod
    def start(cls):
        if not is_multiprocess():
            return None
        try:
            store = torch.distributed.distributed_c10d._get_default_store()
        except (AttributeError, RuntimeError, ValueError):
            return None
        return cls(store, torch.distributed.get_rank(), torch.distributed.get_world_size())

    def _run(self):
        while not self._stop.wait(POLL_S):
            try:
                if not self.store.check([_ABORT_KEY]):
                    continue
                origin, _, message = self.store.get(_ABORT_KEY).decode('utf-8', 'replace').partition(':')
            except Exception:  # the store went away (rank 0 finished normally): nothing left to watch
                return
            if origin == str(self.rank) or self._stop.is_set():
                return
            print(f'rank {self.rank}: stopping, rank {origin} failed: {message}', file=sys.stderr, flush=True)
            try:
                self.store.add(_ACK_KEY, 1)
            except Exception:
                pass
            os._exit(1)

    def post(self, exc):
        """Tell the other ranks; wait (bounded) until they have read it."""
        self._stop.set()
        message = _one_line(exc)
        print(f'rank {self.rank}: {message}; stopping all ranks', file=sys.stderr, flush=True)
        try:
            self.store.set(_ABORT_KEY, f'{self.rank}:{message}')
            waited = 0.0
            while waited < ACK_WAIT_S and self.store.add(_ACK_KEY, 0) < self.world_size - 1:
                threading.Event().wait(0.05)
                waited += 0.05
        except Exception:
            pass

    def stop(self):
        self._stop.set()


def stop_all_ranks_on_error(fn):
    """Decorator: an exception in ``fn`` on any rank ends the other ranks promptly with its message."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        watch = _AbortWatch.start()
        try:
            return fn(*args, **kwargs)
        except BaseException as exc:
            if watch is not None and not isinstance(exc, SystemExit):
                watch.post(exc)
            raise
        finally:
            if watch is not None:
                watch.stop()
    return wrapper
