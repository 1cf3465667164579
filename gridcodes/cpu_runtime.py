"""Where the CPU backend's work runs and where its memory comes from.

- ``BUFFERS``: freed buffers handed to the next request of the same size, so that the
  backend's tens of megabytes per call are not page-faulted in again every call;
- ``in_background``: serial ATen ops on Python threads while the caller goes on.
"""

from __future__ import annotations

import math
import os
import threading
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import torch

# Most bytes of freed buffers kept for reuse: 512 MiB.
BUFFER_LIMIT = 2**29


class _Buffers:
    """Freed buffers, handed to the next request of the same size and dtype.

    Memory fresh from the system costs a page fault per 4 KiB page on first write, and
    glibc gives large freed blocks back to the system, so without reuse every call pays
    for its tens of megabytes again (10-20% of a call at the small-64 shape). Holds at most
    ``BUFFER_LIMIT`` bytes, dropping the longest-held buffers first (sizes no longer asked
    for); thread-safe (finalizers may return buffers from any thread).
    """

    def __init__(self):
        self.entries: OrderedDict[int, torch.Tensor] = OrderedDict()  # oldest first
        self.by_size: dict[tuple, list[int]] = {}
        self.held = 0
        self.count = 0
        self.lock = threading.Lock()

    def empty(self, *shape: int, dtype: torch.dtype) -> torch.Tensor:
        """An uninitialised CPU tensor, reusing a freed buffer when one fits exactly."""
        with self.lock:
            ids = self.by_size.get((math.prod(shape), dtype))
            if ids:
                buffer = self.entries.pop(ids.pop())
                self.held -= buffer.nbytes
                return buffer.view(shape)
        return torch.empty(shape, dtype=dtype)

    def give(self, tensors) -> None:
        """Take back tensors from ``empty`` that nothing reads any more."""
        with self.lock:
            for tensor in tensors:
                if tensor is None or tensor.nbytes > BUFFER_LIMIT:
                    continue
                while self.held + tensor.nbytes > BUFFER_LIMIT:
                    old_id, old = self.entries.popitem(last=False)
                    self.by_size[(old.numel(), old.dtype)].remove(old_id)
                    self.held -= old.nbytes
                self.count += 1
                self.entries[self.count] = tensor
                self.by_size.setdefault((tensor.numel(), tensor.dtype), []).append(self.count)
                self.held += tensor.nbytes

    def clear(self) -> None:
        """Give every held buffer back to the allocator."""
        with self.lock:
            self.entries.clear()
            self.by_size.clear()
            self.held = 0


BUFFERS = _Buffers()
# A forked child starts with an empty pool and a fresh lock (another thread of the parent
# may have held it at the fork).
os.register_at_fork(after_in_child=BUFFERS.__init__)


_POOL: tuple[int, int, ThreadPoolExecutor] | None = None


def _pool() -> ThreadPoolExecutor:
    """``torch.get_num_threads()`` worker threads, made anew when that number changes or in
    a forked child (where the parent's threads do not exist)."""
    global _POOL
    key = (os.getpid(), torch.get_num_threads())
    if _POOL is None or _POOL[:2] != key:
        if _POOL is not None and _POOL[0] == key[0]:
            _POOL[2].shutdown(wait=False)
        _POOL = (*key, ThreadPoolExecutor(key[1], "gridcodes-cpu"))
    return _POOL[2]


def in_background(tasks: list) -> Callable[[], None]:
    """Start ``tasks`` (callables) on worker threads; returns the function that waits for
    them (and raises what they raised). With one torch thread they run here, in order.

    Only for serial ATen ops, such as ``index_add_`` on a 1-D tensor, which release the GIL
    and open no OpenMP region. A parallel op on a worker thread would give that thread an
    OpenMP team of its own, and with more OpenMP threads than cores libgomp stops spinning
    between parallel regions, for the whole process: every later op then pays for waking
    its team (measured: bench/results/cpu_notes.md, "Measurements behind the code").
    """
    if torch.get_num_threads() <= 1:
        for task in tasks:
            task()
        return lambda: None
    futures = [_pool().submit(task) for task in tasks]

    def wait() -> None:
        for future in futures:
            future.result()

    return wait
