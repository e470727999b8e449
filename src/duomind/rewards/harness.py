"""The trusted harness that runs INSIDE the sandbox, around the untrusted program.

`sandbox.run_program` starts `python -I -B -c <this file's text>` and writes a JSON job to its stdin:
`{"code", "tests", "nonce", "result_fd", "uid", "guard", "workdir", "expose"}`. Steps:

1. read the job, then point stdin at /dev/null (the program gets EOF, not the job);
2. under `unshare` as root, in the run's private mount namespace (`expose`): cover directories
   closed to others and the shared temp directories with empty tmpfs mounts, then bind back the
   interpreter's directories read-only and the working directory read-write, so the run's uid can
   import the standard library and write only in its own directory;
3. drop to the sandbox's own unprivileged uid when the job names one (root parents only);
4. install the guard: an audit hook (PEP 578) that ends the program with a `blocked` report on
   process creation, signals, sockets, ctypes calls, writes outside the working directory and
   reads of other processes' /proc entries;
5. run the code, then each test in the same namespace, reporting each on the result fd.

The guard is a tripwire that gives clear verdicts, not the boundary: a program can defeat anything
in its own interpreter, so the OS layers (rlimits, uid, namespaces, bubblewrap) are what contain it.
Reports carry the run's nonce so stray writes to the fd are ignored. Standard library only.
"""

import json
import os
import signal
import sys

BLOCKED_EXIT = 97
_SPAWN = {"os.fork", "os.forkpty", "os.posix_spawn", "os.spawn", "os.exec", "os.system", "subprocess.Popen",
          "pty.spawn"}
_SIGNAL = {"os.kill", "os.killpg", "signal.pthread_kill"}
_NET = {"socket.connect", "socket.bind", "socket.sendto", "socket.sendmsg"}
_CTYPES = {"ctypes.dlsym", "ctypes.dlsym/handle", "ctypes.call_function", "ctypes.cdata", "ctypes.string_at"}
_PATH_OPS = {"os.remove", "os.rmdir", "os.mkdir", "os.rename", "os.symlink", "os.link", "os.chmod", "os.chown",
             "os.truncate", "os.utime", "shutil.rmtree", "shutil.move", "shutil.copyfile", "os.mkfifo", "os.mknod"}
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC


def main() -> None:
    job = json.loads(sys.stdin.buffer.read())
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    write, dumps, nonce, fd, getpid, me = os.write, json.dumps, job["nonce"], job["result_fd"], os.getpid, os.getpid()

    def report(**fields: object) -> None:
        if getpid() != me and fields.get("event") != "blocked":
            os._exit(0)  # a fork of the program came back into the harness: only the original reports
        write(fd, (dumps({"nonce": nonce, **fields}) + "\n").encode())

    if job.get("expose"):
        _expose(job["expose"]["masks"], job["expose"]["ro"], job["expose"]["rw"])
    if job.get("uid") is not None:  # a uid of its own: RLIMIT_NPROC then binds, and no file is ours to write
        os.setgroups([])
        os.setgid(job["uid"])
        os.setuid(job["uid"])

    def on_cpu_limit(signum: int, frame: object) -> None:
        report(event="cpu_limit")
        os._exit(BLOCKED_EXIT + 1)

    signal.signal(signal.SIGXCPU, on_cpu_limit)
    if job.get("guard", True):
        sys.addaudithook(_make_guard(os.path.realpath(job["workdir"]), report))

    namespace = {"__name__": "__solution__", "__builtins__": __builtins__}
    if _run_stage("code", job["code"], namespace, report):
        for i, test in enumerate(job["tests"]):
            _run_stage(i, test, namespace, report)
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:  # the program may have closed or replaced its streams
            pass
    report(event="done")
    os._exit(0)  # skip the program's atexit handlers and non-daemon threads


def _expose(masks: list, ro: list, rw: list) -> None:
    """Hide `masks` under empty tmpfs mounts, then bind `ro` (read-only) and `rw` back at the same paths.

    Runs as root in a mount namespace of the run's own (`unshare --mount`, private propagation), so
    nothing here is visible outside it. The binds are taken through O_PATH descriptors opened
    before the masks hide them.
    """
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    ms_rdonly, ms_nosuid, ms_nodev, ms_remount, ms_bind, ms_rec = 1, 2, 4, 32, 4096, 16384

    def mount(source: object, target: str, fstype: object, flags: int, data: object = None) -> None:
        if libc.mount(source, target.encode(), fstype, flags, data) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"sandbox mount of {target}: {os.strerror(err)}")

    binds = [(b, True) for b in ro] + [(b, False) for b in rw]
    fds = [os.open(b, os.O_PATH | os.O_DIRECTORY) for b, _ in binds]
    for m in masks:
        mount(b"tmpfs", m, b"tmpfs", ms_nosuid | ms_nodev, b"mode=0755,size=1m")
    for (b, read_only), fd in zip(binds, fds):
        os.makedirs(b, mode=0o755, exist_ok=True)
        mount(f"/proc/self/fd/{fd}".encode(), b, None, ms_bind | ms_rec)
        mount(None, b, None, ms_remount | ms_bind | ms_nosuid | ms_nodev | (ms_rdonly if read_only else 0))
        os.close(fd)
    for m in masks:  # nothing more may be created in the cover
        mount(None, m, None, ms_remount | ms_rdonly | ms_nosuid | ms_nodev)


def _run_stage(stage: object, source: str, namespace: dict, report) -> bool:
    """Compile and run one piece of source; report pass/fail; return whether it passed."""
    try:
        exec(compile(source, f"<{'solution' if stage == 'code' else f'test {stage}'}>", "exec"), namespace)
    except SystemExit as e:  # exit(0) at the end of a script is not a failure
        ok = e.code in (None, 0)
        report(stage=stage, passed=ok, error=None if ok else f"SystemExit: {e.code}")
        return ok
    except BaseException as e:  # noqa: BLE001 - every failure of untrusted code is a result
        report(stage=stage, passed=False, error=f"{type(e).__name__}: {str(e)[:300]}",
               memory=isinstance(e, MemoryError))
        return False
    report(stage=stage, passed=True, error=None)
    return True


def _make_guard(workdir: str, report):
    """Audit hook that ends the program on the first forbidden operation."""
    realpath, exit_now, prefix = os.path.realpath, os._exit, workdir.rstrip("/") + "/"

    def foreign_proc(path: object) -> bool:  # /proc/<pid>/... of another process (environ, cmdline, mem)
        if isinstance(path, int):
            return False
        parts = realpath(path.decode(errors="replace") if isinstance(path, bytes) else str(path)).split("/")
        return len(parts) > 2 and parts[1] == "proc" and parts[2].isdigit() and int(parts[2]) != os.getpid()

    def outside(path: object) -> bool:
        if isinstance(path, int):  # an fd the program already holds
            return False
        if isinstance(path, bytes):
            path = path.decode(errors="replace")
        full = realpath(str(path))
        return full != workdir and not full.startswith(prefix) and full != os.devnull

    def guard(event: str, args: tuple) -> None:
        reason = None
        if event in _SPAWN:
            reason = "process creation"
        elif event in _SIGNAL:
            reason = "signal to a process"
        elif event in _NET:
            reason = "network access"
        elif event in _CTYPES or (event == "ctypes.dlopen" and args and args[0] is not None):
            reason = "foreign function call"
        elif event == "open" and len(args) >= 3 and _is_write(args[1], args[2]) and outside(args[0]):
            reason = "write outside the working directory"
        elif event == "open" and args and foreign_proc(args[0]):
            reason = "reading another process's /proc entry"
        elif event in _PATH_OPS and args and any(outside(a) for a in args[:2] if isinstance(a, (str, bytes))):
            reason = "file change outside the working directory"
        elif event == "resource.setrlimit":
            reason = "changing resource limits"
        if reason:
            report(event="blocked", what=event, reason=reason)
            exit_now(BLOCKED_EXIT)

    return guard


def _is_write(mode: object, flags: object) -> bool:
    if isinstance(mode, str) and any(c in mode for c in "wax+"):
        return True
    return isinstance(flags, int) and bool(flags & _WRITE_FLAGS)


if __name__ == "__main__":
    main()
