"""Hostile programs: each must be contained, get the right verdict in bounded time, and leave no process.

Two groups:
- with the guard (the default), in EVERY isolation mode this machine supports, so the logged
  fallbacks (no bubblewrap, no namespaces) are held to the same verdicts;
- without the guard, in the strongest mode, to show the OS layers contain the program on their own
  (each test skips where the layer it needs is missing here, and says which).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import pytest
from rewards_helpers import MODES, strays

from duomind.rewards import sandbox
from duomind.rewards.sandbox import Limits, run_program

LIMITS = Limits(wall_s=1.5, cpu_s=3, memory_mb=512, processes=24, output_bytes=1 << 20)
BOUND_S = 10.0  # every hostile run ends well within this
PROJECT = Path(__file__).resolve().parents[2]
OUTSIDE = {"project": PROJECT, "etc": Path("/etc"), "tmp": Path(tempfile.gettempdir())}
SLEEP_MARK = "987654"

FORK_BOMB = "import os\nwhile True:\n    os.fork()\n"
SPIN = "while True:\n    pass\n"
ALLOC_10G = "x = bytearray(10 * 1024 ** 3)\n"
PRINT_1G = "import sys\nchunk = 'x' * (1 << 20)\nfor _ in range(1024):\n    sys.stdout.write(chunk)\n"
GRANDCHILD = (f"import os, time\nif os.fork() == 0:\n    os.setsid()\n    if os.fork() == 0:\n"
              f"        os.execv('/bin/sleep', ['sleep', '{SLEEP_MARK}'])\n    os._exit(0)\ntime.sleep(0.3)\n")


def _connect(port: int) -> str:
    return f"import socket\ns = socket.create_connection(('127.0.0.1', {port}), timeout=1)\ns.sendall(b'pwned')\n"


def _write(path: Path) -> str:
    return f"open({str(path)!r}, 'w').write('pwned')\n"


def _read_env(secret: str) -> str:
    return (f"import os, glob\nfound = [k for k, v in os.environ.items() if {secret!r} in v]\n"
            f"for p in [f'/proc/{{os.getppid()}}/environ'] + glob.glob('/proc/*/environ'):\n"
            f"    try:\n        found += [p] if {secret.encode()!r} in open(p, 'rb').read() else []\n"
            f"    except OSError:\n        pass\nprint('FOUND' if found else 'CLEAN', found)\n")


def _kill(pids: list[int]) -> str:
    return (f"import os, signal\nfor pid in [os.getppid(), *{pids}]:\n    try:\n"
            f"        os.kill(pid, signal.SIGKILL)\n    except OSError as e:\n        print('refused', pid, e)\n")


def _run(code: str, mode: str, guard: bool = True, kill_strays: list | None = None, marker: str | None = None):
    t0 = time.monotonic()
    run = run_program(code, ["assert True"], LIMITS, isolation=mode, guard=guard)
    elapsed = time.monotonic() - t0
    left = strays(run.run_id, marker)
    if kill_strays is not None:
        kill_strays += left
    assert elapsed < BOUND_S, f"took {elapsed:.1f}s"
    assert not left, f"stray processes: {[p.info.get('cmdline') for p in left]}"
    return run, elapsed


@pytest.fixture
def listener():
    """A TCP listener on 127.0.0.1 that records whether anyone connected."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(4)
    srv.setblocking(False)
    port = srv.getsockname()[1]

    def connected() -> bool:
        try:
            conn, _ = srv.accept()
        except BlockingIOError:
            return False
        conn.close()
        return True

    yield port, connected
    srv.close()


@pytest.fixture
def victim():
    """A process of ours that the hostile program will try to kill."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    yield proc
    proc.kill()
    proc.wait()


@pytest.fixture
def secret(monkeypatch):
    value = "s3cr3t-" + os.urandom(4).hex()
    monkeypatch.setenv("DUOMIND_TEST_SECRET", value)
    return value


# ------------------------------------------------------------------------------ with the guard, every mode

@pytest.mark.timeout(60)
@pytest.mark.parametrize("mode", MODES)
class TestGuarded:
    def test_fork_bomb(self, mode, kill_strays):
        run, _ = _run(FORK_BOMB, mode, kill_strays=kill_strays)
        assert run.verdict == "blocked" and "process creation" in run.blocked

    def test_infinite_loop(self, mode, kill_strays):
        run, elapsed = _run(SPIN, mode, kill_strays=kill_strays)
        assert run.verdict == "timeout"
        assert elapsed >= LIMITS.wall_s * 0.9

    def test_allocate_10gb(self, mode, kill_strays):
        run, _ = _run(ALLOC_10G, mode, kill_strays=kill_strays)
        assert run.verdict == "memory"
        assert "MemoryError" in run.error

    def test_socket_to_loopback(self, mode, listener, kill_strays):
        port, connected = listener
        run, _ = _run(_connect(port), mode, kill_strays=kill_strays)
        assert run.verdict == "blocked" and "network" in run.blocked
        assert not connected()

    @pytest.mark.parametrize("where", ["project", "etc", "tmp"])
    def test_write_outside(self, mode, where, kill_strays):
        target = OUTSIDE[where] / f"duomind-pwned-{os.getpid()}"
        run, _ = _run(_write(target), mode, kill_strays=kill_strays)
        assert run.verdict == "blocked" and "outside the working directory" in run.blocked
        assert not target.exists()

    def test_read_parent_environment(self, mode, secret, kill_strays):
        run, _ = _run(_read_env(secret), mode, kill_strays=kill_strays)
        assert secret not in run.stdout + run.stderr
        assert "FOUND" not in run.stdout
        # the environment itself is scrubbed, so the os.environ scan comes up empty; the guard then
        # stops the /proc scan at the first other process's environ
        assert run.verdict == "blocked" and "/proc" in run.blocked

    def test_kill_parent(self, mode, victim, kill_strays):
        run, _ = _run(_kill([victim.pid, os.getpid()]), mode, kill_strays=kill_strays)
        assert run.verdict == "blocked" and "signal" in run.blocked
        assert victim.poll() is None

    def test_grandchild_sleeping_forever(self, mode, kill_strays):
        run, _ = _run(GRANDCHILD, mode, kill_strays=kill_strays, marker=SLEEP_MARK)
        assert run.verdict == "blocked"

    def test_print_1gb(self, mode, kill_strays):
        run, _ = _run(PRINT_1G, mode, kill_strays=kill_strays)
        assert run.verdict == "output_limit"
        assert len(run.stdout) <= LIMITS.keep_bytes  # the verdict says the cap stopped it, not the clock


# ------------------------------------------------------------------------------ OS layers alone (no guard)

STRONGEST = sandbox.choose_mode("auto")
INFO = sandbox.isolation()
needs_ns = pytest.mark.skipif(STRONGEST == "none", reason="no namespaces on this machine")
needs_nproc = pytest.mark.skipif(not INFO["process_limit_binds"],
                                 reason="root without a private uid: RLIMIT_NPROC does not bind")
needs_ro = pytest.mark.skipif(not (INFO["read_only_root"] or INFO["private_uid"]),
                              reason="neither bubblewrap nor a private uid: files stay writable")


@pytest.mark.timeout(60)
class TestOsLayers:
    @needs_nproc
    def test_fork_bomb(self, kill_strays):
        run, _ = _run(FORK_BOMB, STRONGEST, guard=False, kill_strays=kill_strays)
        assert run.verdict in ("crash", "timeout")
        assert run.verdict == "timeout" or "Resource temporarily unavailable" in (run.error or "")

    def test_infinite_loop(self, kill_strays):
        run, _ = _run(SPIN, STRONGEST, guard=False, kill_strays=kill_strays)
        assert run.verdict == "timeout"

    def test_allocate_10gb(self, kill_strays):
        run, _ = _run(ALLOC_10G, STRONGEST, guard=False, kill_strays=kill_strays)
        assert run.verdict == "memory"

    @needs_ns
    def test_socket_to_loopback(self, listener, kill_strays):
        port, connected = listener
        run, _ = _run(_connect(port), STRONGEST, guard=False, kill_strays=kill_strays)
        assert run.verdict == "crash"  # refused or unreachable inside the empty network namespace
        assert not connected()

    @needs_ro
    @pytest.mark.parametrize("where", ["project", "etc", "tmp"])
    def test_write_outside(self, where, kill_strays):
        if where == "tmp" and not INFO["private_tmp"]:
            pytest.skip("no private /tmp here: the shared temp directory stays writable without the guard")
        target = OUTSIDE[where] / f"duomind-pwned-{os.getpid()}"
        run, _ = _run(_write(target), STRONGEST, guard=False, kill_strays=kill_strays)
        assert not target.exists()
        if where == "tmp" and STRONGEST == "bwrap":
            assert run.verdict == "ok"  # it wrote into its own throwaway /tmp, which the host never sees
        else:
            assert run.verdict == "crash"
            assert "Read-only file system" in run.error or "Permission denied" in run.error

    @needs_ns
    def test_read_parent_environment(self, secret, kill_strays):
        run, _ = _run(_read_env(secret), STRONGEST, guard=False, kill_strays=kill_strays)
        assert run.verdict == "ok"
        assert run.stdout.startswith("CLEAN")
        assert secret not in run.stdout + run.stderr

    @pytest.mark.skipif(STRONGEST == "none" and not INFO["private_uid"], reason="no pid namespace and no private uid")
    def test_kill_parent(self, victim, kill_strays):
        run, _ = _run(_kill([victim.pid, os.getpid()]), STRONGEST, guard=False, kill_strays=kill_strays)
        assert victim.poll() is None
        assert psutil.Process(os.getpid()).is_running()
        assert run.verdict in ("ok", "crash")  # refused (EPERM/ESRCH), or it killed its own namespace

    def test_grandchild_sleeping_forever(self, kill_strays):
        run, _ = _run(GRANDCHILD, STRONGEST, guard=False, kill_strays=kill_strays, marker=SLEEP_MARK)
        assert run.verdict == "ok"  # the program itself ends fine; its escaped grandchild must not survive

    def test_print_1gb(self, kill_strays):
        run, _ = _run(PRINT_1G, STRONGEST, guard=False, kill_strays=kill_strays)
        assert run.verdict == "output_limit"
