"""Processes the driver starts (workers, the ID index's build) die with it: a parent-death signal on
Linux, and a watchdog thread everywhere. It imports nothing of imagesieve, so any layer may use it.

A worker killed with its driver (SIGKILL, out of memory) must not live on holding memory and the
driver's stdout (which would keep `imagesieve remove ... | cat` from ever ending).

A local Ray instance the driver starts is ended by a reaper process (`reap_ray_sessions`): Ray ties
its head processes to the driver, but the dashboard and runtime-env agents the raylet starts wait on
the dead GCS for over a minute.

Run as a script (stdlib only, so it starts fast), this module is that reaper.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import re
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


_reaper: int | None = None


def reap_ray_sessions() -> None:
    """Call before `ray.init` starts a local instance: once this process is gone (even by SIGKILL), a
    reaper kills every process of the Ray sessions it started. Once per process; Linux only (/proc)."""
    global _reaper
    if sys.platform != "linux" or _reaper is not None:
        return
    # posix_spawn, not Popen: a Popen still running when the driver exits is a ResourceWarning. Its own
    # session: Ctrl-C or a hang-up on the terminal must not end it before the driver; /dev/null for
    # stdio: it must not hold the driver's stdout (`imagesieve ... | cat` ends when the driver does).
    null = [(os.POSIX_SPAWN_OPEN, fd, os.devnull, os.O_RDWR, 0) for fd in (0, 1, 2)]
    _reaper = os.posix_spawn(sys.executable, [sys.executable, "-I", os.path.abspath(__file__), str(os.getpid())],
                             os.environ, file_actions=null, setsid=True)


def _reap(driver_pid: int, interval: float = 0.2) -> None:
    """Wait for the driver to go, then SIGKILL, until none is left, the processes of this user started
    after the reaper that write a file of a Ray session the driver started (Ray names the session folder
    `session_<date>_<pid of the driver>`; every Ray process writes its log there). Other sessions and
    other users' processes are left alone."""
    while os.getppid() == driver_pid:
        time.sleep(interval)
    session = re.compile(rf"/session_[^/]*_{driver_pid}/")
    since = _start_time(os.getpid())
    for _ in range(50):
        found = [pid for pid in _own_pids(since) if _writes(pid, session)]
        if not found:
            return
        for pid in found:
            with contextlib.suppress(OSError):  # gone meanwhile
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.1)


def _start_time(pid: int) -> int:
    """Clock ticks since boot (field 22 of /proc/PID/stat)."""
    with open(f"/proc/{pid}/stat") as f:
        return int(f.read().rsplit(")", 1)[1].split()[19])


def _own_pids(since: int) -> list[int]:
    pids = []
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) == os.getpid():
            continue
        try:
            if os.stat(f"/proc/{name}").st_uid == os.getuid() and _start_time(int(name)) >= since:
                pids.append(int(name))
        except (OSError, IndexError, ValueError):  # gone meanwhile
            pass
    return pids


def _writes(pid: int, pattern: re.Pattern) -> bool:
    """Has a file whose path matches open for writing (a Ray process its log; not, say, `tail -f` reading it)."""
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return False
    for fd in fds:
        try:
            if pattern.search(os.readlink(f"/proc/{pid}/fd/{fd}")):
                with open(f"/proc/{pid}/fdinfo/{fd}") as f:
                    flags = next(int(line.split()[1], 8) for line in f if line.startswith("flags:"))
                if flags & (os.O_WRONLY | os.O_RDWR):
                    return True
        except (OSError, StopIteration, ValueError):  # closed meanwhile
            pass
    return False


if __name__ == "__main__":
    _reap(int(sys.argv[1]))
