"""Attack: a timer left behind to kill the next job (or the worker). The
job arms ITIMER_REAL and ITIMER_PROF with their default, fatal action, and
a POSIX timer (timer_create) sending SIGKILL to its own process. Timers
belong to the job's process, which ends with the job: the next jobs, run
while the timers would have fired, finish."""
import pytest

from hostile_kit import MODES, NODES, WHO, assert_gone, assert_healthy, job, start

ATTACK = WHO + r"""
import ctypes, signal
signal.setitimer(signal.ITIMER_REAL, 0.2)
signal.setitimer(signal.ITIMER_PROF, 0.2)
libc = ctypes.CDLL(None, use_errno=True)

class SigEvent(ctypes.Structure):
    _fields_ = [('value', ctypes.c_void_p), ('signo', ctypes.c_int), ('notify', ctypes.c_int),
                ('pad', ctypes.c_byte * 48)]

class ITimerSpec(ctypes.Structure):
    _fields_ = [('interval', ctypes.c_long * 2), ('value', ctypes.c_long * 2)]

ev = SigEvent(None, signal.SIGKILL, 0)  # SIGEV_SIGNAL
timer = ctypes.c_void_p()
assert libc.timer_create(1, ctypes.byref(ev), ctypes.byref(timer)) == 0  # CLOCK_MONOTONIC
spec = ITimerSpec((0, 0), (0, 200_000_000))
assert libc.timer_settime(timer, 0, ctypes.byref(spec), None) == 0
result
"""


@pytest.mark.parametrize("node", NODES)
@pytest.mark.parametrize("mode", MODES)
def test_a_timer_left_behind_dies_with_its_job(spawn, mode, node):
    w = start(spawn, mode, node)
    status, pid, _ = job(w, mode, ATTACK)
    assert status == "ok", pid
    assert_gone(int(pid))
    # Jobs that run across the moment the timers would have fired.
    for _ in range(3):
        status, value, _ = job(w, mode, "import time\ntime.sleep(0.15)\n'alive'")
        assert (status, value) == ("ok", "alive")
    assert_healthy(w, mode)
