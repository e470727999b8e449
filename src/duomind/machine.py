"""What the machine did while something was measured: its CPU time split into busy, idle and steal.

Steal is CPU time that a shared VM's hypervisor gave other guests while this one wanted to run; when it is
high, timings on the VM come out slower, which is one reason a benchmark's absolute numbers drift from day
to day on a cloud machine. Benchmarks record these shares beside their timings.
"""

from __future__ import annotations

import psutil


def cpu_times() -> dict[str, float]:
    """Seconds the machine's CPUs have spent in each state since boot, summed over CPUs."""
    return psutil.cpu_times()._asdict()


def cpu_shares(start: dict[str, float], end: dict[str, float]) -> dict[str, float]:
    """Busy and steal shares of all CPU time between two `cpu_times()` snapshots (busy: neither idle, waiting
    for I/O nor stolen)."""
    # guest time is already counted inside user time
    times = {k: end[k] - v for k, v in start.items() if k not in ("guest", "guest_nice")}
    total = max(sum(times.values()), 1e-9)
    idle, steal = times.get("idle", 0.0) + times.get("iowait", 0.0), times.get("steal", 0.0)
    return {"busy_fraction": (total - idle - steal) / total, "steal_fraction": steal / total}
