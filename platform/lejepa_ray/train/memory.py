"""This process's memory, from the operating system: what the trainer reports as host memory
and what the benchmarks measure. Standard library only."""

from __future__ import annotations


def resident_bytes(field: str) -> int:
    """A memory figure of this process from Linux's ``/proc/self/status`` (``VmRSS``: resident
    now; ``VmHWM``: the resident high-water mark), in bytes.

    Raises:
        OSError: no ``/proc`` (not Linux). RuntimeError: no such field.
    """
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def peak_rss_bytes() -> int:
    """Peak resident memory of this process since it started its program.

    Linux's ``VmHWM``: unlike ``getrusage``'s ``ru_maxrss``, it is not inherited across
    ``exec`` from the parent that forked (a spawned worker of a large process would otherwise
    report the parent's peak). Elsewhere, ``ru_maxrss``."""
    try:
        return resident_bytes("VmHWM")
    except OSError:
        # lazy: no `resource` module on Windows, and only this fallback needs it.
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
