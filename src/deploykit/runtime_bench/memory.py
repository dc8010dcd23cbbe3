"""Peak resident memory of a step.

Two sources, the better one wins:

* the kernel's high-water mark (``VmHWM``): exact, but only ever grows over
  the process's life. When it rises during a step, the new value *is* that
  step's peak. (We never reset it: that would also reset ``ru_maxrss``,
  which users' own tools such as ``/usr/bin/time`` read.)
* a sampler thread reading RSS every few milliseconds, for steps that peak
  below an earlier step. It is a lower bound: the TFLite converter holds the
  GIL for seconds, so samples can be 1.7 s apart (measured on VGG16).
"""

from __future__ import annotations

import ctypes
import gc
import resource
import threading
import time

import psutil


def high_water_mark_bytes() -> int | None:
    """The kernel's peak-RSS counter for this process (Linux ``VmHWM``), or None."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def process_peak_rss_bytes() -> int:
    """Process-lifetime peak RSS (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def release_memory() -> None:
    """Collect garbage and hand freed heap pages back to the OS.

    Without ``malloc_trim`` glibc keeps freed arenas mapped, and the RSS of
    one target's conversion would sit under the next one's.
    """
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


class PeakRSS:
    """Context manager measuring this process's peak RSS while the block runs.

    Example:
        >>> with PeakRSS() as mem:
        ...     convert()
        >>> mem.peak_bytes, mem.start_bytes
    """

    def __init__(self, interval_s: float = 0.005):
        self.interval_s = interval_s
        self._proc = psutil.Process()
        self.start_bytes = 0
        self.peak_bytes = 0
        self.seconds = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _sample(self) -> None:
        while not self._stop.is_set():
            rss = self._proc.memory_info().rss
            if rss > self.peak_bytes:
                self.peak_bytes = rss
            self._stop.wait(self.interval_s)

    def __enter__(self) -> "PeakRSS":
        self.start_bytes = self.peak_bytes = self._proc.memory_info().rss
        self._hwm_start = high_water_mark_bytes()
        self.exact = False
        self._t0 = time.perf_counter()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.peak_bytes = max(self.peak_bytes, self._proc.memory_info().rss)
        hwm = high_water_mark_bytes()
        if hwm is not None and self._hwm_start is not None and hwm > self._hwm_start:
            self.peak_bytes, self.exact = hwm, True  # the process peak rose inside this step
        self.seconds = time.perf_counter() - self._t0

    def to_dict(self) -> dict[str, float | int]:
        return {
            "seconds": round(self.seconds, 4),
            "peak_rss_bytes": self.peak_bytes,
            "start_rss_bytes": self.start_bytes,
            "peak_source": "kernel high-water mark (exact)" if self.exact else "sampled every 5 ms (lower bound)",
        }
