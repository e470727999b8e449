"""Run untrusted Python in a fresh, contained subprocess: the ONLY place DuoMind executes such code.

Layers, outermost first (each used where this machine allows it; `isolation()` says which are on):

1. parent: a new session and process group, `python -I -B`, a scrubbed environment, a private temp
   working directory; rlimits on address space, CPU time, processes, file size, open files and
   core dumps (each capped at the current hard limit); no-new-privileges; a wall-clock deadline,
   after which the whole group, every descendant and (as root) every process of the run's uid is
   killed and reaped; stdout/stderr capped.
2. identity (root only): the program runs under a uid of its own, so RLIMIT_NPROC binds (root is
   exempt from it), it owns no file outside its directory and may signal no other process. An
   interpreter inside a directory closed to others (e.g. /root/.pyenv) is made reachable in the
   run's own mount namespace: the closed directory is covered with an empty tmpfs and the
   interpreter's directories are bound back read-only (so the program also cannot see the rest).
3. namespaces: bubblewrap when installed (read-only root, tmpfs /tmp, private /proc and /dev, new
   pid/net/ipc/uts/mount namespaces, dies with its parent); otherwise `unshare` with net, pid, ipc,
   uts and mount namespaces (plus a user namespace when not root: no network, no view of other
   processes); otherwise none, logged.
4. the harness's guard (`harness.py`): a tripwire that ends the program on forbidden operations so
   they get a clear `blocked` verdict.

Verdicts: ok, wrong_answer, timeout, memory, crash, blocked, output_limit.
"""

from __future__ import annotations

import ctypes
import functools
import itertools
import json
import logging
import os
import resource
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import psutil

log = logging.getLogger(__name__)

VERDICTS = ("ok", "wrong_answer", "timeout", "memory", "crash", "blocked", "output_limit")
MODES = ("bwrap", "unshare", "none")
HARNESS = (Path(__file__).parent / "harness.py").read_text()
INSIDE_WORKDIR = "/tmp/work"  # where bubblewrap shows the program its directory
_UID_BASE = 1 << 31  # far above any real account: uid = base + (parent pid, run counter)
_counter = itertools.count()
_libc = ctypes.CDLL(None, use_errno=True)
_PR_SET_PDEATHSIG, _PR_SET_NO_NEW_PRIVS = 1, 38


@dataclass(frozen=True)
class Limits:
    """Resource limits for one program.

    Args:
        wall_s: wall-clock seconds before the parent kills the program (verdict `timeout`).
        cpu_s: CPU seconds (RLIMIT_CPU).
        memory_mb: address space in MiB (RLIMIT_AS); exceeding it gives `memory`.
        processes: processes and threads of the run's uid (RLIMIT_NPROC).
        file_mb: largest file the program may write (RLIMIT_FSIZE).
        open_files: file descriptors (RLIMIT_NOFILE).
        output_bytes: stdout + stderr beyond this ends the program (verdict `output_limit`).
        keep_bytes: how much of stdout and of stderr to return.
    """

    wall_s: float = 10.0
    cpu_s: int = 10
    memory_mb: int = 1024
    processes: int = 32
    file_mb: int = 16
    open_files: int = 64
    output_bytes: int = 1 << 20
    keep_bytes: int = 4096


@dataclass
class TestOutcome:
    """One test snippet's result."""

    index: int
    passed: bool
    error: str | None = None


@dataclass
class Run:
    """What happened to one program."""

    verdict: str
    tests: list[TestOutcome] = field(default_factory=list)
    error: str | None = None  # the solution code's own failure, if any
    blocked: str | None = None  # the guard's reason, if it stopped the program
    stdout: str = ""
    stderr: str = ""
    exit_code: int | None = None
    seconds: float = 0.0
    isolation: str = "none"
    run_id: str = ""  # also the DUOMIND_SANDBOX variable of every process of the run

    @property
    def pass_rate(self) -> float:
        return sum(t.passed for t in self.tests) / len(self.tests) if self.tests else float(self.verdict == "ok")

    def to_dict(self) -> dict:
        return asdict(self)


def run_program(code: str, tests: Sequence[str] = (), limits: Limits = Limits(), isolation: str = "auto",
                guard: bool = True) -> Run:
    """Run `code`, then each test snippet, in ONE sandboxed program; report each test separately.

    Args:
        code: the untrusted program (module level code, run with `__name__ == "__solution__"`).
        tests: Python snippets (typically asserts) run after the code in the same namespace.
        limits: resource limits.
        isolation: `auto` (strongest available), `bwrap`, `unshare` or `none`.
        guard: install the harness's audit-hook tripwire (off only to test the OS layers alone).

    Returns:
        The `Run` with its verdict and per-test outcomes.
    """
    mode = choose_mode(isolation)
    uid = _run_uid(mode)
    workdir = tempfile.mkdtemp(prefix="duomind-sbx-")
    if uid is not None:
        os.chown(workdir, uid, uid)
    inside = INSIDE_WORKDIR if mode == "bwrap" else workdir
    nonce = os.urandom(8).hex()
    env = _scrubbed_env(inside, nonce)
    read_fd, write_fd = os.pipe()
    job = {"code": code, "tests": list(tests), "nonce": nonce, "result_fd": write_fd, "uid": uid,
           "guard": guard, "workdir": inside, "expose": _unshare_exposure(workdir) if mode == "unshare" and uid else None}
    nproc = limits.processes if uid is not None or os.geteuid() == 0 else limits.processes + _own_process_count()
    start = time.monotonic()
    try:
        proc = subprocess.Popen(
            _command(mode, workdir, uid), stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            cwd=workdir, env=env, pass_fds=(write_fd,), start_new_session=True,
            preexec_fn=functools.partial(_child_setup, limits, nproc),
        )
    except BaseException:
        os.close(read_fd)
        shutil.rmtree(workdir, ignore_errors=True)
        raise
    finally:
        os.close(write_fd)  # only the child may hold the write end, so EOF means it is gone
    # without a pid namespace, orphans that escaped the tree are found by the run's uid or env marker
    orphan_uid = uid if mode == "none" else None
    marker = nonce if mode == "none" and uid is None else None
    try:
        out, err, results, timed_out, over = _collect(proc, json.dumps(job).encode(), read_fd,
                                                      start + limits.wall_s, limits, orphan_uid, marker)
    finally:
        _reap(proc, orphan_uid, marker)
        os.close(read_fd)
        shutil.rmtree(workdir, ignore_errors=True)
    run = _verdict(results, nonce, len(tests), timed_out, over, proc.returncode)
    run.stdout = out[: limits.keep_bytes].decode(errors="replace")
    run.stderr = err[: limits.keep_bytes].decode(errors="replace")
    run.exit_code = proc.returncode
    run.seconds = time.monotonic() - start
    run.isolation = mode + ("+uid" if uid is not None else "")
    run.run_id = nonce
    return run


def choose_mode(isolation: str = "auto") -> str:
    """Resolve `auto` to the strongest working mode; refuse a named mode this machine lacks."""
    if isolation == "auto":
        return _auto_mode()
    if isolation not in MODES:
        raise ValueError(f"unknown isolation {isolation!r}; choose one of auto, {', '.join(MODES)}")
    if not _works(isolation):
        raise RuntimeError(f"isolation {isolation!r} does not work on this machine; use isolation='auto'")
    return isolation


def isolation() -> dict:
    """What containment `auto` gives on this machine (for logs, docs and the benchmark JSON)."""
    mode = _auto_mode()
    uid = _run_uid(mode) is not None
    return {
        "mode": mode,
        "bubblewrap": mode == "bwrap",
        "namespaces": {"bwrap": ["pid", "net", "ipc", "uts", "mount"] + ([] if os.geteuid() == 0 else ["user"]),
                       "unshare": ["net", "pid", "mount", "ipc", "uts"] + ([] if os.geteuid() == 0 else ["user"]),
                       "none": []}[mode],
        "read_only_root": mode == "bwrap",
        "private_uid": uid,
        # /tmp, /var/tmp and /dev/shm: the run sees empty ones of its own (bwrap), or read-only covers (unshare+uid)
        "private_tmp": mode == "bwrap" or (mode == "unshare" and uid),
        # directories closed to others (e.g. /root), covered by an empty tmpfs but for the interpreter
        "hidden": _exposure()[0] if mode == "bwrap" or (mode == "unshare" and uid) else [],
        "rlimits": ["as", "cpu", "nproc", "fsize", "nofile", "core"],
        "process_limit_binds": uid or os.geteuid() != 0,
        "guard": True,
    }


@functools.cache
def _auto_mode() -> str:
    for mode in MODES:
        if _works(mode):
            level = logging.INFO if mode == "bwrap" else logging.WARNING
            log.log(level, "sandbox isolation: %s%s", mode, "" if mode == "bwrap" else
                    " (bubblewrap unavailable: no read-only root; install the `bubblewrap` package)"
                    if mode == "unshare" else " (no namespaces available: only rlimits, uid and the guard)")
            return mode
    raise AssertionError("unreachable: mode 'none' always works")


@functools.cache
def _works(mode: str) -> bool:
    """Probe a mode once by running an empty program through it, harness and all (mounts, uid drop, guard)."""
    if mode == "none":
        return True
    if shutil.which("bwrap" if mode == "bwrap" else "unshare") is None:
        return False
    workdir = tempfile.mkdtemp(prefix="duomind-probe-")
    uid = _run_uid(mode)
    try:
        if uid is not None:
            os.chown(workdir, uid, uid)
        job = {"code": "import fractions", "tests": [], "nonce": "probe", "result_fd": 1, "uid": uid, "guard": True,
               "workdir": INSIDE_WORKDIR if mode == "bwrap" else workdir,
               "expose": _unshare_exposure(workdir) if mode == "unshare" and uid else None}
        done = subprocess.run(_command(mode, workdir, uid), input=json.dumps(job).encode(), cwd=workdir,
                              env=_scrubbed_env(workdir, "probe"), capture_output=True, timeout=30)
        ok = done.returncode == 0 and any(json.loads(line).get("event") == "done"
                                          for line in done.stdout.splitlines() if line.startswith(b"{"))
        if not ok:
            log.info("sandbox: %s unavailable: %s", mode, (done.stderr or done.stdout).decode(errors="replace")
                     .strip()[-300:])
        return ok
    except (OSError, subprocess.SubprocessError, ValueError) as e:
        log.info("sandbox: %s unavailable: %s", mode, e)
        return False
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _run_uid(mode: str) -> int | None:
    """A uid of the run's own when we are root and the interpreter stays reachable for it."""
    if os.geteuid() != 0:
        return None
    if mode == "none" and not all(_world_reachable(p) for p in _python_paths()):
        return None  # without a mount namespace to bind it in, an unprivileged uid could not run Python
    return _UID_BASE + ((os.getpid() % (1 << 22)) << 8) + next(_counter) % 256


@functools.cache
def _python_paths() -> tuple[str, ...]:
    paths = {os.path.realpath(p) for p in (sys.prefix, sys.base_prefix, os.path.dirname(sys.executable))}
    paths.add(os.path.dirname(os.path.realpath(sys.executable)))
    return tuple(sorted(paths))


def _world_reachable(path: str) -> bool:
    p = Path(path)
    return all(os.stat(a).st_mode & 0o001 for a in [*reversed(p.parents), p]) and bool(os.stat(p).st_mode & 0o004)


def _command(mode: str, workdir: str, uid: int | None) -> list[str]:
    python = [sys.executable, "-I", "-B", "-c", HARNESS]
    if mode == "none":
        return python
    if mode == "unshare":
        user = [] if uid is not None else ["--user", "--map-root-user"]  # real root needs no user namespace
        return ["unshare", *user, "--mount", "--net", "--pid", "--ipc", "--uts", "--fork", "--kill-child",
                "--mount-proc", "--", *python]
    cmd = ["bwrap", "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc", "--tmpfs", "/tmp",
           *_bwrap_exposure(), "--bind", workdir, INSIDE_WORKDIR, "--chdir", INSIDE_WORKDIR,
           "--unshare-ipc", "--unshare-pid", "--unshare-net", "--unshare-uts", "--unshare-cgroup-try",
           "--die-with-parent", "--new-session", "--hostname", "sandbox"]
    if os.geteuid() != 0:
        cmd.append("--unshare-user")
    elif uid is not None:  # the harness needs these two to drop to the run's uid; it then has none
        cmd += ["--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID"]
    return [*cmd, "--", *python]


@functools.cache
def _exposure() -> tuple[list[str], list[str], list[str]]:
    """How to keep the interpreter reachable for an unprivileged uid: (masks, dirs, binds).

    An ancestor closed to others (e.g. /root for a pyenv install) is covered with an empty tmpfs
    (`masks`), so the sandbox sees nothing else in it; the directories leading to the interpreter
    are recreated in it (`dirs`) and the interpreter's directories bound back read-only (`binds`).
    """
    masks, dirs, binds = [], [], []
    for path in _python_paths():
        chain = [*reversed(Path(path).parents), Path(path)][1:]
        closed = next((a for a in chain[:-1] if not os.stat(a).st_mode & 0o001), None)
        if closed is not None:
            masks.append(str(closed))
            dirs += [str(d) for d in chain[chain.index(closed) + 1: -1]]
            binds.append(path)
    return list(dict.fromkeys(masks)), list(dict.fromkeys(dirs)), list(dict.fromkeys(binds))


_SHARED_TMP = ("/tmp", "/var/tmp", "/dev/shm")  # world-writable: each run gets empty, read-only covers


def _unshare_exposure(workdir: str) -> dict[str, list[str]]:
    """The harness's mount plan under `unshare` with a private uid (see `harness._expose`).

    Covers the directories closed to others and the shared temp directories, then binds back the
    interpreter (read-only) and the run's working directory (read-write): as under bubblewrap, the
    program can write nowhere but its own directory, even where the file modes would allow it.
    """
    masks, _, binds = _exposure()
    tmp = [d for d in _SHARED_TMP if os.path.isdir(d) and not os.path.islink(d)]
    under = [p for p in _python_paths() if any(p == t or p.startswith(t + "/") for t in tmp)]
    return {"masks": masks + tmp, "ro": list(dict.fromkeys(binds + under)), "rw": [workdir]}


@functools.cache
def _bwrap_exposure() -> tuple[str, ...]:
    """bubblewrap args for `_exposure`; paths under /tmp are bound back too, as the sandbox gets a fresh /tmp."""
    masks, dirs, binds = _exposure()
    binds = binds + [p for p in _python_paths() if p == "/tmp" or p.startswith("/tmp/")]
    args: list[str] = []
    for m in dict.fromkeys(masks):
        args += ["--tmpfs", m]
    for d in dict.fromkeys(dirs):
        args += ["--perms", "0755", "--dir", d]
    for b in dict.fromkeys(binds):
        args += ["--ro-bind", b, b]
    return tuple(args)


def _scrubbed_env(workdir: str, nonce: str) -> dict[str, str]:
    # Nothing of the parent's environment passes; BLAS libraries would otherwise start a thread per core.
    return {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8", "HOME": workdir,
            "TMPDIR": workdir, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
            "DUOMIND_SANDBOX": nonce}


def _child_setup(limits: Limits, nproc: int) -> None:
    """Runs in the forked child before exec: die with the parent, no privilege gain, rlimits."""
    _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    _libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)
    mib = 1 << 20
    for res, soft, hard in (
        (resource.RLIMIT_AS, limits.memory_mb * mib, limits.memory_mb * mib),
        (resource.RLIMIT_CPU, limits.cpu_s, limits.cpu_s + 1),  # SIGXCPU first, SIGKILL a second later
        (resource.RLIMIT_NPROC, nproc, nproc),
        (resource.RLIMIT_FSIZE, limits.file_mb * mib, limits.file_mb * mib),
        (resource.RLIMIT_NOFILE, limits.open_files, limits.open_files),
        (resource.RLIMIT_CORE, 0, 0),
    ):
        cur_hard = resource.getrlimit(res)[1]
        if cur_hard != resource.RLIM_INFINITY:
            soft, hard = min(soft, cur_hard), min(hard, cur_hard)
        resource.setrlimit(res, (soft, hard))


def _own_process_count() -> int:
    # RLIMIT_NPROC counts every process of a non-root user, not just the sandbox's
    uid = os.getuid()
    return sum(1 for p in psutil.process_iter(["uids"]) if p.info["uids"] and p.info["uids"].real == uid)


def _collect(proc: subprocess.Popen, job: bytes, result_fd: int, deadline: float, limits: Limits,
             uid: int | None, marker: str | None):
    """Write the job; read stdout, stderr and the result pipe until EOF, the deadline, or too much output."""
    sel = selectors.DefaultSelector()
    bufs = {proc.stdout.fileno(): bytearray(), proc.stderr.fileno(): bytearray(), result_fd: bytearray()}
    for fd in bufs:
        os.set_blocking(fd, False)
        sel.register(fd, selectors.EVENT_READ)
    stdin, pending = proc.stdin.fileno(), memoryview(job)
    os.set_blocking(stdin, False)
    sel.register(stdin, selectors.EVENT_WRITE)  # never block on a child that does not read
    exit_fd = _pidfd(proc.pid)
    if exit_fd is not None:
        sel.register(exit_fd, selectors.EVENT_READ)
    printed, timed_out, over, exited_at = 0, False, False, None
    try:
        while len(sel.get_map()) > (exit_fd is not None) + bool(pending):
            now = time.monotonic()
            if exited_at is None and proc.poll() is not None:
                exited_at = now
                # stray descendants may hold the pipes open: end them, then drain what is left
                _kill_all(proc, uid, marker)
            if now >= deadline or (exited_at is not None and now - exited_at > 2.0):
                timed_out = exited_at is None
                break
            for key, _ in sel.select(min(deadline - now, 0.05 if exit_fd is None else deadline - now)):
                if key.fd == exit_fd:
                    sel.unregister(exit_fd)
                    os.close(exit_fd)
                    exit_fd = None
                    continue
                if key.fd == stdin:
                    try:
                        pending = pending[os.write(stdin, pending[: 1 << 16]):]
                    except BlockingIOError:
                        continue
                    except BrokenPipeError:  # gone before reading its job: the verdict will say crash
                        pending = pending[:0]
                    if not pending:
                        sel.unregister(stdin)
                        proc.stdin.close()
                    continue
                chunk = os.read(key.fd, 1 << 16)
                if not chunk:
                    sel.unregister(key.fd)
                    continue
                buf = bufs[key.fd]
                if key.fd == result_fd:
                    if len(buf) + len(chunk) > 1 << 20:  # a sane harness writes a few KiB
                        over = True
                    buf += chunk[: (1 << 20) - len(buf)]
                else:
                    printed += len(chunk)
                    buf += chunk[: max(0, limits.keep_bytes - len(buf))]
                    over = over or printed > limits.output_bytes
            if over:
                break
    finally:
        sel.close()
        if exit_fd is not None:
            os.close(exit_fd)
    return (bytes(bufs[proc.stdout.fileno()]), bytes(bufs[proc.stderr.fileno()]), bytes(bufs[result_fd]),
            timed_out, over)


def _pidfd(pid: int) -> int | None:
    try:
        return os.pidfd_open(pid)
    except (AttributeError, OSError):  # old kernel or Python: fall back to polling
        return None


def _kill_all(proc: subprocess.Popen, uid: int | None, marker: str | None) -> list[psutil.Process]:
    """SIGKILL the run's process group, its descendants, and orphans found by uid or env marker.

    `uid`/`marker` are given only without a pid namespace: inside one, every process of the run is
    a descendant of the leader, and once the leader has exited by itself the kernel has already
    emptied the namespace (a namespace's init exits only after all its members), so nothing is left.
    """
    if proc.returncode is not None and uid is None and marker is None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # members of the group outside the namespace, if any
        except (ProcessLookupError, PermissionError):
            pass
        return []
    victims = []
    try:
        leader = psutil.Process(proc.pid)
        victims = [leader, *leader.children(recursive=True)]
    except psutil.Error:
        pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    if uid is not None or marker is not None:  # orphans that left the tree (double fork + setsid)
        for p in psutil.process_iter(["uids"]):
            try:
                real = p.info["uids"].real
                if real == uid or (marker is not None and real == os.getuid()
                                   and p.environ().get("DUOMIND_SANDBOX") == marker):
                    victims.append(p)
            except psutil.Error:
                pass
    for p in victims:
        try:
            p.kill()
        except psutil.Error:
            pass
    return victims


def _reap(proc: subprocess.Popen, uid: int | None, marker: str | None) -> None:
    """Kill whatever is left of the run and wait until it is gone."""
    victims = _kill_all(proc, uid, marker)
    for stream in (proc.stdin, proc.stdout, proc.stderr):
        stream.close()
    proc.wait()
    _wait_gone([v for v in victims if v.pid != proc.pid], timeout=5.0)


def _wait_gone(victims: list[psutil.Process], timeout: float) -> None:
    """Wait until every victim has exited; a zombie has (only its reaping is left, to its new parent)."""
    end = time.monotonic() + timeout
    while victims and time.monotonic() < end:
        alive = []
        for p in victims:
            try:
                if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                    alive.append(p)
            except psutil.Error:
                pass
        victims = alive
        if victims:
            time.sleep(0.005)


def _verdict(raw: bytes, nonce: str, n_tests: int, timed_out: bool, over: bool, returncode: int | None) -> Run:
    events = []
    for line in raw.splitlines():
        try:
            msg = json.loads(line)
        except ValueError:
            continue
        if isinstance(msg, dict) and msg.get("nonce") == nonce:
            events.append(msg)
    tests = [TestOutcome(i, False, "not run") for i in range(n_tests)]
    code_error, blocked, memory, done, cpu = None, None, False, False, False
    for msg in events:
        stage = msg.get("stage")
        memory = memory or bool(msg.get("memory"))
        if stage == "code":
            code_error = None if msg.get("passed") else (msg.get("error") or "failed")
        elif isinstance(stage, int) and 0 <= stage < n_tests:
            tests[stage] = TestOutcome(stage, bool(msg.get("passed")), msg.get("error"))
        event = msg.get("event")
        done = done or event == "done"
        cpu = cpu or event == "cpu_limit"
        if event == "blocked":
            blocked = f"{msg.get('reason')} ({msg.get('what')})"
    signaled = returncode is not None and returncode in (-signal.SIGXCPU, 128 + signal.SIGXCPU)
    if timed_out or cpu or signaled:
        verdict = "timeout"
    elif over:
        verdict = "output_limit"
    elif blocked:
        verdict = "blocked"
    elif memory:
        verdict = "memory"
    elif not done or code_error:
        verdict = "crash"
    else:
        verdict = "ok" if all(t.passed for t in tests) else "wrong_answer"
    return Run(verdict=verdict, tests=tests, error=code_error, blocked=blocked)
