"""Helpers shared by the reward tests (imported by name: tests/ directories have no __init__)."""

from __future__ import annotations

import time

import psutil

from duomind.rewards import sandbox

MODES = [m for m in sandbox.MODES if sandbox._works(m)]


def strays(run_id: str, marker: str | None = None, wait_s: float = 2.0) -> list[psutil.Process]:
    """Live (non-zombie) processes left by a sandbox run: its env marker, or a cmdline marker."""
    deadline = time.monotonic() + wait_s
    while True:
        found = []
        for p in psutil.process_iter(["cmdline", "status"]):
            try:
                if p.info["status"] == psutil.STATUS_ZOMBIE:
                    continue
                cmd = " ".join(p.info["cmdline"] or [])
                if (marker and marker in cmd) or p.environ().get("DUOMIND_SANDBOX") == run_id:
                    found.append(p)
            except psutil.Error:
                continue
        if not found or time.monotonic() > deadline:
            return found
        time.sleep(0.05)
