"""tools/pyport-run end to end: its exit statuses are what CI relies on."""
import os
import subprocess
import textwrap

import pytest

from conftest import REPO

PYPORT_RUN = os.path.join(REPO, "tools", "pyport-run")
USAGE, FAILED, WORKER, NOTHING_RAN = 2, 1, 3, 4


def run(*args, cwd=None):
    # Executed directly: the shebang and the executable bit are part of the tool.
    return subprocess.run([PYPORT_RUN, *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, timeout=300)


def write(path, text):
    path.write_text(textwrap.dedent(text))
    return path


@pytest.fixture
def passing(tmp_path):
    return write(tmp_path / "test_passing.py", """
        import os

        def test_one():
            print("output of test_one")

        def test_two():
            assert os.getpid() > 0
    """)


def test_passing_tests_exit_0(passing):
    r = run("-v", passing)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "test_passing.py::test_one PASSED" in r.stdout
    assert "test_passing.py::test_two PASSED" in r.stdout
    assert "pyport-run: 2 passed" in r.stdout


def test_a_failing_test_makes_it_exit_1(tmp_path):
    target = write(tmp_path / "test_failing.py", """
        def test_fine():
            pass

        def test_broken():
            assert 1 + 1 == 3, "deliberately failing"
    """)
    r = run(target)
    assert r.returncode == FAILED, r.stdout + r.stderr
    assert "deliberately failing" in r.stdout  # pytest's report, relayed
    assert "pyport-run: 1 failed, 1 passed" in r.stdout
    assert "tests failed" in r.stderr


def test_an_erroring_fixture_makes_it_exit_1(tmp_path):
    target = write(tmp_path / "test_fixture_error.py", """
        import pytest

        @pytest.fixture
        def broken():
            raise RuntimeError("fixture exploded")

        def test_uses_it(broken):
            pass
    """)
    r = run(target)
    assert r.returncode == FAILED
    assert "fixture exploded" in r.stdout
    assert "1 errors" in r.stdout


def test_a_file_that_does_not_import_makes_it_exit_1(tmp_path):
    target = write(tmp_path / "test_syntax.py", "def test_x(:\n    pass\n")
    r = run(target)
    assert r.returncode == FAILED
    assert "SyntaxError" in r.stdout


def test_no_tests_means_nothing_ran(tmp_path):
    target = write(tmp_path / "test_empty.py", "x = 1\n")
    r = run(target)
    assert r.returncode == NOTHING_RAN
    assert "nothing ran" in r.stderr


def test_all_deselected_means_nothing_ran(passing):
    r = run("-k", "no_such_test", passing)
    assert r.returncode == NOTHING_RAN


def test_only_skips_means_nothing_ran(tmp_path):
    target = write(tmp_path / "test_skips.py", """
        import pytest

        @pytest.mark.skip(reason="not today")
        def test_skipped():
            pass
    """)
    r = run(target)
    assert r.returncode == NOTHING_RAN
    assert "1 skipped" in r.stdout


def test_keyword_selects(passing):
    r = run("-v", "-k", "two", passing)
    assert r.returncode == 0
    assert "test_two PASSED" in r.stdout and "test_one" not in r.stdout.split("collected")[1]
    assert "1 passed, 1 deselected" in r.stdout


def test_directory_and_node_id_targets(passing):
    assert "2 passed" in run(passing.parent).stdout
    r = run(f"{passing}::test_two")
    assert r.returncode == 0 and "pyport-run: 1 passed" in r.stdout


def test_path_and_module_targets(tmp_path):
    lib = tmp_path / "lib"
    lib.mkdir()
    write(lib / "helper_mod.py", "def answer():\n    return 42\n")
    write(lib / "test_by_name.py", """
        import helper_mod

        def test_answer():
            assert helper_mod.answer() == 42
    """)
    # A module name resolves on the worker's path, which --path extends.
    r = run("--path", lib, "test_by_name", cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "pyport-run: 1 passed" in r.stdout


def test_missing_target_is_a_usage_error(tmp_path):
    r = run(tmp_path / "nope.py")
    assert r.returncode == USAGE
    assert "no such test file, directory or module" in r.stderr


def test_bad_keyword_expression_is_a_usage_error(passing):
    r = run("-k", "(((", passing)
    assert r.returncode == USAGE


def test_no_target_is_a_usage_error():
    assert run().returncode == USAGE


def test_missing_worker_is_a_usage_error(passing, tmp_path):
    r = run("--worker", tmp_path / "no_worker", passing)
    assert r.returncode == USAGE
    assert "no_worker" in r.stderr


def test_worker_exit_during_tests(tmp_path):
    target = write(tmp_path / "test_exit.py", """
        import os

        def test_exit():
            os._exit(7)
    """)
    r = run(target)
    assert r.returncode == WORKER
    assert "exited with status 7" in r.stderr


def test_worker_segfault_during_tests(tmp_path):
    target = write(tmp_path / "test_segv.py", """
        import ctypes

        def test_segv():
            ctypes.string_at(0)
    """)
    r = run(target)
    assert r.returncode == WORKER
    assert "killed by signal SIGSEGV (11)" in r.stderr
    assert "Segmentation fault" in r.stderr  # the worker's faulthandler report


def test_the_tests_run_in_a_child_of_the_runner(tmp_path):
    report = tmp_path / "where.txt"
    target = write(tmp_path / "test_where.py", f"""
        import os

        def test_where():
            with open({str(report)!r}, "w") as f:
                # The worker's parent is its keeper, the runner's child.
                with open(f"/proc/{{os.getppid()}}/stat") as stat:
                    keeper_parent = stat.read().rsplit(")", 1)[1].split()[1]
                f.write(f"{{os.getpid()}} {{keeper_parent}}")
    """)
    runner = subprocess.Popen([PYPORT_RUN, str(target)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    out, err = runner.communicate(timeout=300)
    assert runner.returncode == 0, out + err
    pid, ppid = map(int, report.read_text().split())
    assert ppid == runner.pid and pid != runner.pid
    assert f"worker pid {pid}," in out


def test_runtime_proof_tests_fail_outside_a_worker():
    # python_runtime/tests/test_in_worker.py must fail under a plain pytest,
    # or it would prove nothing when it passes under pyport-run.
    target = os.path.join(REPO, "python_runtime", "tests", "test_in_worker.py")
    env = dict(os.environ, PYTHONPATH=os.path.join(REPO, "python_runtime"))
    r = subprocess.run(["/usr/bin/python3", "-m", "pytest", "-q", "-p", "no:cacheprovider", target],
                       capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "not running under tools/pyport-run" in r.stdout


# --exec

def test_exec_runs_a_script_as_main(tmp_path):
    script = write(tmp_path / "script.py", """
        import sys
        print("name", __name__, "args", sys.argv[1:])
    """)
    r = run("--exec", script, "a", "b")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "name __main__ args ['a', 'b']" in r.stdout


def test_exec_script_that_raises_exits_1_with_traceback(tmp_path):
    script = write(tmp_path / "raises.py", """
        def fail():
            raise KeyError("missing thing")
        fail()
    """)
    r = run("--exec", script)
    assert r.returncode == 1
    assert "KeyError" in r.stderr and "missing thing" in r.stderr
    assert "fail" in r.stderr  # the traceback names the function


def test_exec_script_exit_status(tmp_path):
    assert run("--exec", write(tmp_path / "exit5.py", "import sys\nsys.exit(5)\n")).returncode == 5
    assert run("--exec", write(tmp_path / "exit0.py", "import sys\nsys.exit()\n")).returncode == 0
    r = run("--exec", write(tmp_path / "exitmsg.py", "import sys\nsys.exit('bad input')\n"))
    assert r.returncode == 1 and "bad input" in r.stdout + r.stderr


def test_exec_script_imports_from_its_directory(tmp_path):
    write(tmp_path / "sibling.py", "VALUE = 'from sibling'\n")
    script = write(tmp_path / "main.py", "import sibling\nprint(sibling.VALUE)\n")
    r = run("--exec", script)
    assert r.returncode == 0 and "from sibling" in r.stdout


def test_exec_crash_is_a_worker_error(tmp_path):
    r = run("--exec", write(tmp_path / "crash.py", "import os\nos._exit(9)\n"))
    assert r.returncode == WORKER
    assert "exited with status 9" in r.stderr


def test_exec_missing_script_is_a_usage_error(tmp_path):
    assert run("--exec", tmp_path / "none.py").returncode == USAGE
