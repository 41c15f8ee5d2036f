"""Workers die with their driver: a parent-death signal on Linux, and a watchdog thread everywhere.

A worker killed with its driver (SIGKILL, out of memory) must not live on holding memory and the
driver's stdout (which would keep `imagesieve remove ... | cat` from ever ending).
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import threading
import time

PR_SET_PDEATHSIG = 1


def die_with(driver_pid: int, interval: float = 0.5) -> None:
    """Call first thing in a process the driver started (forked from it directly)."""
    if sys.platform == "linux":
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        except (OSError, AttributeError):
            pass
    if os.getppid() != driver_pid:  # the driver died before the signal was armed
        os._exit(1)
    threading.Thread(target=_watch, args=(driver_pid, interval), name="imagesieve-lifeline", daemon=True).start()


def _watch(driver_pid: int, interval: float) -> None:
    while True:
        time.sleep(interval)
        if os.getppid() != driver_pid:
            os._exit(1)
