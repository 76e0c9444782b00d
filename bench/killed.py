"""Shared by the peers' drivers: wait for a task's pid mark, kill that
worker process with SIGKILL, and time what follows."""
import os
import signal
import time


def kill_marked(mark: str, within: float = 30.0) -> float:
    """Waits for `mark` (a pid), kills it; returns the kill's time."""
    deadline = time.monotonic() + within
    while not os.path.exists(mark):
        if time.monotonic() > deadline:
            raise TimeoutError("the task never started")
        time.sleep(0.005)
    with open(mark) as f:
        pid = int(f.read())
    os.kill(pid, signal.SIGKILL)
    return time.perf_counter()
