"""How many threads torch should use right now: as many as the CPUs that other programs leave free.

Why (measured, ``benchmarks/README.md``, "Under load"): torch's CPU operators run as OpenMP parallel regions
(GNU libgomp in the PyPI builds), each split evenly over the threads and closed by a barrier. When another program
holds one of the cores, the thread that shares it is descheduled for whole scheduler slices while its peer spins at
the barrier, so every region costs up to a slice: the ``fast`` engine (about 3,800 regions per 1024² image) went
from 2.4 s to 44-79 s beside two busy processes on two cores, burning 21 s of CPU time against 4.6 s when it ran
on one thread. One thread has no barrier to wait at. So the ``fast`` engine measures, between blocks, how much CPU
time other processes took on this process's CPUs, and runs the next block on the CPUs left free (at least one,
at most torch's own setting); on a quiet machine that is torch's setting, as before.

The measurement is the CPU time of the allowed CPUs (``/proc/stat`` on Linux, including time stolen by a
hypervisor; ``GetSystemTimes`` on Windows; ``host_statistics`` on macOS) minus this process's own CPU time, over
windows of at least ``WINDOW_S``. Where no counter can be read, nothing changes.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
from typing import Callable, Iterator, Optional

import torch

logger = logging.getLogger(__name__)

# The shortest stretch the counters are read over: /proc/stat counts in 10 ms ticks, so 150 ms on two CPUs is
# 30 ticks and a process busy on one of them shows as 15.
WINDOW_S = 0.15
# Others' CPU use that still leaves a CPU free: a thread keeps a CPU that others use less than this fraction of.
SPARE = 0.25

BusyCounter = Callable[[], float]  # busy seconds of the CPUs this process may use, summed over them


def threads_to_use(cpus: int, others: float, most: int) -> int:
    """Threads for ``cpus`` CPUs of which other processes use ``others`` (in CPUs): 1 .. ``most``."""
    return max(1, min(most, int(cpus - others + SPARE)))


class ThreadGovernor:
    """Sets torch's intra-op thread count during :meth:`running` from how busy the CPUs are with other programs.

    Call :meth:`checkpoint` between pieces of work (the fast encoder's blocks); it re-decides once at least
    ``WINDOW_S`` has passed since the last decision. On leaving :meth:`running`, torch's setting is restored.
    """

    def __init__(
        self,
        busy: Optional[BusyCounter] = None,
        cpus: Optional[int] = None,
        clock: Callable[[], float] = time.perf_counter,
        own_cpu: Callable[[], float] = time.process_time,
    ) -> None:
        if busy is None:
            busy, cpus = cpu_busy_counter()
        self._busy, self.cpus = busy, cpus or 1
        self._clock, self._own_cpu = clock, own_cpu
        self.threads: Optional[int] = None  # the last decision; None before the first one
        self._most = 1
        self._active = False
        self._since = self._sample() if busy is not None else None

    @contextlib.contextmanager
    def running(self) -> Iterator[None]:
        if self._busy is None or self._active:
            yield
            return
        self._most = torch.get_num_threads()
        self._active = True
        try:
            if self.threads is not None:
                self._apply(min(self.threads, self._most))
            self.checkpoint()
            yield
        finally:
            self._active = False
            if torch.get_num_threads() != self._most:
                torch.set_num_threads(self._most)

    def checkpoint(self) -> None:
        """Re-decide the thread count if the last decision is at least ``WINDOW_S`` old (inside ``running``)."""
        if not self._active or self._most <= 1:
            return
        now = self._sample()
        wall = now[0] - self._since[0]
        if wall < WINDOW_S:
            return
        others = max(0.0, ((now[1] - self._since[1]) - (now[2] - self._since[2])) / wall)
        self._since = now
        self._apply(threads_to_use(self.cpus, others, self._most))
        logger.debug("other processes used %.2f of %d CPUs: %d threads", others, self.cpus, self.threads)

    def _apply(self, threads: int) -> None:
        self.threads = threads
        if torch.get_num_threads() != threads:
            torch.set_num_threads(threads)

    def _sample(self) -> tuple[float, float, float]:
        return self._clock(), self._busy(), self._own_cpu()


def cpu_busy_counter() -> tuple[Optional[BusyCounter], Optional[int]]:
    """(function returning busy CPU seconds, number of CPUs counted), or (None, None) where none can be read."""
    try:
        if sys.platform.startswith("linux"):
            return _linux_counter()
        if sys.platform == "win32":
            return _windows_counter()
        if sys.platform == "darwin":
            return _macos_counter()
    except (OSError, ValueError, AttributeError) as error:
        logger.debug("no CPU counters (%s): the thread count stays as set", error)
    return None, None


def _linux_counter() -> tuple[BusyCounter, int]:
    cpus = {f"cpu{index}" for index in os.sched_getaffinity(0)}
    tick = float(os.sysconf("SC_CLK_TCK"))

    def busy() -> float:
        total = 0
        with open("/proc/stat", "rb") as stat:
            for line in stat:
                if not line.startswith(b"cpu"):
                    break  # the per-CPU lines come first; the rest (interrupt counts) is long
                fields = line.split()
                if fields[0].decode() in cpus:
                    # user nice system idle iowait irq softirq steal: all but idle and iowait are taken
                    user, nice, system, _, _, irq, softirq, steal = (int(value) for value in fields[1:9])
                    total += user + nice + system + irq + softirq + steal
        return total / tick

    busy()  # fails here, not later, where the file is missing or different
    return busy, len(cpus)


def _windows_counter() -> tuple[BusyCounter, int]:
    import ctypes
    from ctypes import wintypes

    get_system_times = ctypes.windll.kernel32.GetSystemTimes  # type: ignore[attr-defined]

    def busy() -> float:
        idle, kernel, user = wintypes.FILETIME(), wintypes.FILETIME(), wintypes.FILETIME()
        if not get_system_times(ctypes.byref(idle), ctypes.byref(kernel), ctypes.byref(user)):
            raise OSError("GetSystemTimes failed")
        value = lambda t: (t.dwHighDateTime << 32) | t.dwLowDateTime  # noqa: E731 - 100 ns units
        return (value(kernel) + value(user) - value(idle)) * 1e-7  # kernel time includes idle time

    busy()
    return busy, os.cpu_count() or 1


def _macos_counter() -> tuple[BusyCounter, int]:
    import ctypes

    system = ctypes.CDLL("/usr/lib/libSystem.dylib")
    host = system.mach_host_self()
    host_cpu_load_info, states = 3, 4  # HOST_CPU_LOAD_INFO; user, system, idle, nice ticks
    tick = float(os.sysconf("SC_CLK_TCK"))

    def busy() -> float:
        ticks, count = (ctypes.c_uint * states)(), ctypes.c_uint(states)
        if system.host_statistics(host, host_cpu_load_info, ticks, ctypes.byref(count)) != 0:
            raise OSError("host_statistics failed")
        return (ticks[0] + ticks[1] + ticks[3]) / tick

    busy()
    return busy, os.cpu_count() or 1
