"""The stall hook of the kill tests: a run that stops for good at a chosen point, so that a test kills
it in a state it knows, whatever the speed of the machine.

Run as a script, it runs the `imagesieve` command line (or a library script, as `__main__`) with one
call of the run wrapped:

    python tests/stalling.py STATE POINT N imagesieve ARGS...
    python tests/stalling.py STATE POINT N SCRIPT.py

POINT names the call (`POINTS`). Every process of the run (local workers are forked from the driver,
so they inherit the wrapper) takes an exclusive lock on STATE/lock around that call: the first N calls
are made, each naming the file it writes in STATE/written; the next one stops before it is made, for
good, and says so in STATE/stalled, and so does every later one. So once STATE/stalled exists, exactly N
calls were made, a process of the run waits at the point, none will pass it, and the run cannot end.
Nothing in `imagesieve` knows of the hook, so it costs a run nothing. The wrapped functions are
internal: should one be renamed or its writes move, no run stalls and `wait_for_stall` fails saying so
(a kill test cannot pass without its kill).
"""

from __future__ import annotations

import fcntl
import importlib
import os
import runpy
import signal
import subprocess
import sys
import time
from pathlib import Path

# point: (module, the function the run calls by that name, the path it writes, a part of every such path)
POINTS = {
    "done": ("imagesieve.stages.io.writer", "write_json_atomic",  # a shard's done marker, its last write
             lambda args: args[1], "/_imagesieve/done/"),
    "rename": ("imagesieve.tar.write", "AtomicShardWriter.commit",  # a shard's tar, complete under its temp
               lambda args: args[0].final_path, ""),                 # name, renamed to its own
    "publish": ("imagesieve.tar.write", "publish",  # a shard's tar, checked and recorded as about to be
                lambda args: args[1], ""),                # published, renamed to its own name
    "place": ("imagesieve.stages.io.folder", "place_file",  # an image folder's kept file, copied or linked
              lambda args: args[1], ""),
    "hashes": ("imagesieve.stages.hashing.hash_writer", "write_parquet_atomic",  # a shard's hash table
               lambda args: args[1], "/hashes/"),
}
STALL_TIMEOUT = 600  # seconds a test waits for the stall: a bound for a run that never gets there, not a speed


def command(state: Path, point: str, n: int, *args: str) -> list[str]:
    """The command that runs `args` (`imagesieve ...` or a script), stalling before the call at `point` that
    follows the `n`th."""
    state.mkdir(parents=True, exist_ok=True)
    return [sys.executable, __file__, str(state), point, str(n), *args]


def written(state: Path) -> list[str]:
    """The paths written by the calls the hook let through, in their order."""
    path = state / "written"
    return path.read_text().splitlines() if path.exists() else []


def wait_for_stall(proc: subprocess.Popen, state: Path) -> None:
    """Returns once the run is stalled; fails the test if it ends first or never gets there."""
    deadline = time.monotonic() + STALL_TIMEOUT
    while not (state / "stalled").exists():
        if proc.poll() is not None:
            err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
            raise AssertionError(f"the run ended (exit code {proc.returncode}) before it reached its stall point "
                                 f"({len(written(state))} calls let through): {err[-2000:]}")
        if time.monotonic() > deadline:
            raise AssertionError(f"the run did not reach its stall point in {STALL_TIMEOUT} s "
                                 f"({len(written(state))} calls let through)")
        time.sleep(0.02)


def kill(proc: subprocess.Popen) -> None:
    """SIGKILL the driver and wait until it and every process it started are gone (a worker still
    dying holds what the driver held: a rerun must not race with it)."""
    started = descendants(proc.pid)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=STALL_TIMEOUT)
    wait_gone(started)


def wait_gone(pids: list[int], timeout: float = STALL_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while any(alive(p) for p in pids):
        if time.monotonic() > deadline:
            raise AssertionError(f"processes of a killed run still alive after {timeout} s: "
                                 f"{[p for p in pids if alive(p)]}")
        time.sleep(0.02)


def descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def install(state: Path, point: str, n: int) -> None:
    """Wrap the call at `point` in this process (and so in every worker forked from it)."""
    module_name, name, path_of, part = POINTS[point]
    *outer, attribute = name.split(".")
    owner = importlib.import_module(module_name)
    for step in outer:
        owner = getattr(owner, step)
    call = getattr(owner, attribute)

    def stalling_call(*args, **kwargs):
        path = str(path_of(args))
        if part not in path.replace(os.sep, "/"):
            return call(*args, **kwargs)
        with open(state / "lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # one check-and-call at a time, across the run's processes
            if len(written(state)) < n:
                result = call(*args, **kwargs)
                with open(state / "written", "a") as log:
                    log.write(f"{path}\n")
                return result
            with open(state / "stalled", "a") as stalled:
                stalled.write(f"{os.getpid()} {path}\n")
        while True:  # past the Nth: never made
            time.sleep(3600)

    setattr(owner, attribute, stalling_call)


if __name__ == "__main__":
    state, point, n, *run = sys.argv[1:]
    install(Path(state).resolve(), point, int(n))
    if run[0] == "imagesieve":
        from imagesieve.cli import main

        sys.exit(main(run[1:]))
    sys.argv = run
    sys.path[0] = os.path.dirname(os.path.abspath(run[0]))  # as `python SCRIPT.py` would have it
    runpy.run_path(run[0], run_name="__main__")
