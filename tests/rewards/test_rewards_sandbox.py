"""The sandbox's ordinary behaviour: per-test results, verdicts, environment, limits, reporting channel."""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import tempfile

import pytest

from duomind.rewards import harness, sandbox
from duomind.rewards.sandbox import Limits, run_program

FAST = Limits(wall_s=5, cpu_s=5)


def test_each_test_reported_separately():
    run = run_program("def add(a, b):\n    return a + b\n",
                      ["assert add(1, 2) == 3", "assert add(2, 2) == 5", "add(1)", "assert add('a', 'b') == 'ab'"], FAST)
    assert run.verdict == "wrong_answer"
    assert [t.passed for t in run.tests] == [True, False, False, True]
    assert run.tests[1].error.startswith("AssertionError")
    assert run.tests[2].error.startswith("TypeError")
    assert run.pass_rate == 0.5


def test_all_pass_is_ok_and_output_is_captured():
    run = run_program("print('hello')\nimport sys\nprint('warn', file=sys.stderr)\n", ["assert 1 + 1 == 2"], FAST)
    assert run.verdict == "ok" and run.pass_rate == 1.0
    assert run.stdout == "hello\n" and run.stderr == "warn\n"
    assert run.isolation.startswith(sandbox.choose_mode("auto"))


@pytest.mark.parametrize("code, needle", [("def f(:\n    pass\n", "SyntaxError"), ("raise ValueError('bad')\n", "ValueError")])
def test_broken_solution_is_a_crash_and_tests_do_not_run(code, needle):
    run = run_program(code, ["assert True", "assert True"], FAST)
    assert run.verdict == "crash"
    assert needle in run.error
    assert all(not t.passed and t.error == "not run" for t in run.tests)


def test_exit_zero_at_the_end_of_a_script_still_runs_tests():
    run = run_program("x = 3\nimport sys\nsys.exit(0)\n", ["assert x == 3"], FAST)
    assert run.verdict == "ok"


def test_a_test_that_kills_the_interpreter_is_a_crash():
    run = run_program("x = 1\n", ["assert x == 1", "import os; os._exit(0)", "assert True"], FAST)
    assert run.verdict == "crash"
    assert [t.passed for t in run.tests] == [True, False, False]


def test_main_block_is_skipped_and_stdin_is_empty():
    code = "import sys\nDATA = sys.stdin.read()\nif __name__ == '__main__':\n    raise SystemExit(3)\n"
    run = run_program(code, ["assert DATA == ''"], FAST)
    assert run.verdict == "ok"


def test_environment_is_scrubbed_and_workdir_is_private(monkeypatch):
    monkeypatch.setenv("DUOMIND_TEST_TOKEN", "do-not-leak")
    code = ("import os, json\nprint(json.dumps({'env': sorted(os.environ), 'cwd': os.getcwd()}))\n"
            "open('scratch.txt', 'w').write('fine')\n")
    run = run_program(code, ["assert open('scratch.txt').read() == 'fine'"], FAST, isolation="none")
    assert run.verdict == "ok"
    info = __import__("json").loads(run.stdout)
    assert "DUOMIND_TEST_TOKEN" not in info["env"]
    assert set(info["env"]) <= set(sandbox._scrubbed_env("/x", "n")) | {"LC_CTYPE"}
    assert os.path.basename(info["cwd"]).startswith("duomind-sbx-")
    assert not os.path.exists(info["cwd"])  # removed after the run


def test_forked_copies_cannot_report():
    # without the guard a fork is allowed; the child runs the tests too, but only the original may report
    code = "import os\nORIGINAL = os.getpid()\nif os.fork() == 0:\n    pass\nelse:\n    os.wait()\n"
    run = run_program(code, ["import os; assert os.getpid() == ORIGINAL"], FAST, guard=False)
    assert run.verdict == "ok"


def test_forged_reports_without_the_nonce_are_ignored():
    forge = ("import json, os\nline = json.dumps({'nonce': 'guess', 'stage': 0, 'passed': True}) + '\\n'\n"
             "line += json.dumps({'nonce': 'guess', 'event': 'done'}) + '\\n'\n"
             "for fd in range(3, 40):\n    try:\n        os.write(fd, line.encode())\n    except OSError:\n        pass\n")
    run = run_program(forge, ["assert False"], FAST)
    assert run.verdict == "wrong_answer"
    assert run.tests[0].passed is False


def test_cpu_limit_ends_a_spin_before_the_wall_clock():
    run = run_program("while True:\n    pass\n", [], Limits(wall_s=20, cpu_s=1))
    assert run.verdict == "timeout"
    assert run.exit_code == harness.BLOCKED_EXIT + 1  # the harness's SIGXCPU handler, not the parent's kill


def test_file_size_limit():
    run = run_program("open('big', 'wb').write(b'x' * (3 << 20))\n", [], Limits(wall_s=5, file_mb=1))
    assert run.verdict == "crash"
    assert "File too large" in run.error


def test_rlimits_are_capped_at_the_current_hard_limit():
    def lower_then_setup():
        resource.setrlimit(resource.RLIMIT_NOFILE, (20, 20))
        sandbox._child_setup(Limits(open_files=64), nproc=64)

    out = subprocess.run([sys.executable, "-c", "import resource; print(resource.getrlimit(resource.RLIMIT_NOFILE),"
                          " resource.getrlimit(resource.RLIMIT_CORE))"],
                         preexec_fn=lower_then_setup, capture_output=True, text=True, check=True).stdout
    assert out.strip() == "(20, 20) (0, 0)"


def test_unknown_isolation_is_refused():
    with pytest.raises(ValueError, match="unknown isolation"):
        sandbox.choose_mode("docker")


def test_isolation_report_matches_the_mode():
    info = sandbox.isolation()
    assert info["mode"] == sandbox.choose_mode("auto")
    assert info["bubblewrap"] == (info["mode"] == "bwrap")
    if info["mode"] != "none":
        assert {"pid", "net", "mount"} <= set(info["namespaces"])


@pytest.mark.skipif(not sandbox.isolation()["private_tmp"], reason="no private /tmp on this machine")
def test_private_tmp_and_hidden_directories():
    # the host's temp files and closed directories (e.g. /root) are out of sight; only the interpreter shows
    with tempfile.NamedTemporaryFile(prefix="duomind-host-") as host_file:
        hidden = sandbox.isolation()["hidden"]
        code = f"import os, json\nprint(json.dumps([os.path.exists({host_file.name!r}), {{h: os.listdir(h) for h in {hidden!r}}}]))\n"
        run = run_program(code, [], FAST)
    assert run.verdict == "ok", run
    seen_host_file, listings = json.loads(run.stdout)
    assert seen_host_file is False
    for h, names in listings.items():
        inside = {p[len(h) + 1:].split("/")[0] for p in sandbox._python_paths() if p.startswith(h + "/")}
        assert set(names) <= inside


@pytest.mark.skipif(sandbox.isolation()["mode"] != "unshare" or not sandbox.isolation()["private_uid"],
                    reason="the unshare mount plan is used only under unshare with a private uid")
def test_probe_runs_the_whole_harness(monkeypatch):
    # a mode whose set-up fails inside the harness must be reported unavailable, not chosen and then crash every run
    sandbox._works.cache_clear()
    monkeypatch.setattr(sandbox, "_unshare_exposure", lambda workdir: {"masks": ["/no/such/dir"], "ro": [], "rw": []})
    try:
        assert sandbox._works("unshare") is False
        monkeypatch.undo()
        sandbox._works.cache_clear()
        assert sandbox._works("unshare") is True
    finally:
        sandbox._works.cache_clear()
