"""Benchmark child processes that die with their parent.

Each measured trainer runs in a spawned child so its memory and imports are its own. If the parent is killed
(Ctrl-C twice, SIGKILL, a CI timeout), a plain ProcessPoolExecutor child keeps running — and keeps loading the
machine every later measurement shares. The initializer below starts a watchdog thread in the child that exits
as soon as its parent is gone.
"""

from __future__ import annotations

import os
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context


def _watch_parent(parent: int) -> None:
    def watch() -> None:
        while True:
            if os.getppid() != parent:
                os._exit(1)
            time.sleep(1.0)

    threading.Thread(target=watch, daemon=True, name="parent-watchdog").start()


def child_pool(workers: int = 1) -> ProcessPoolExecutor:
    """A spawn-based pool whose workers exit when this process dies."""
    return ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn"), initializer=_watch_parent,
                               initargs=(os.getpid(),))
