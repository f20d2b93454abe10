"""ErlangEventLoop's C++ ready queue and timer heap, and the handles its
call_soon / call_at / call_later / create_task make: they must behave as
asyncio's own (types, methods, cancellation, contexts, the exception
handler, debug mode, closing) while no Python code runs per callback."""
import asyncio
import contextvars
import fractions
import gc
import math
import weakref

import pytest

import erlang


@pytest.fixture
def loop():
    loop = erlang.new_event_loop()
    yield loop
    loop.close()


def run_briefly(loop, seconds=0.0):
    loop.call_later(seconds, loop.stop)
    loop.run_forever()


# ---------------------------------------------------------------- timer handles

def test_call_at_and_call_later_make_asyncio_timer_handles(loop):
    now = loop.time()
    t1 = loop.call_at(now + 10, print)
    t2 = loop.call_later(5, print, "x")
    for t in (t1, t2):
        assert isinstance(t, asyncio.TimerHandle)
        assert t._scheduled and not t.cancelled()
    assert t1.when() == now + 10
    assert now + 5 <= t2.when() <= loop.time() + 5
    assert repr(t2).startswith("<TimerHandle when=")
    assert sorted(loop._scheduled, key=id) == sorted([t1, t2], key=id)
    assert len(loop._scheduled) == 2
    t1.cancel()
    assert t1.cancelled() and loop._timer_cancelled_count == 1
    t1.cancel()  # a second cancel changes nothing
    assert loop._timer_cancelled_count == 1


def test_timers_due_together_run_in_call_order(loop):
    seen = []
    when = loop.time() + 0.005
    for i in range(50):
        loop.call_at(when, seen.append, i)
    run_briefly(loop, 0.01)
    assert seen == list(range(50))


def test_timer_arguments_of_other_number_types(loop):
    seen = []
    now = loop.time()
    # An int delay, an int deadline in the past, and a deadline that is no
    # float at all (asyncio keeps it as given in when()).
    loop.call_later(0, seen.append, "int delay")
    loop.call_at(int(now) - 1, seen.append, "int when")
    late = fractions.Fraction(now) + fractions.Fraction(1, 200)
    t = loop.call_at(late, seen.append, "fraction")
    assert t.when() == late
    run_briefly(loop, 0.02)
    assert seen == ["int when", "int delay", "fraction"]


def test_a_nan_deadline_fires_at_once(loop):
    seen = []
    loop.call_at(math.nan, seen.append, "nan")
    loop.call_soon(loop.stop)
    loop.run_forever()
    assert seen == ["nan"]


def test_bad_timer_arguments(loop):
    with pytest.raises(TypeError, match="when cannot be None"):
        loop.call_at(None, print)
    with pytest.raises(TypeError, match="delay must not be None"):
        loop.call_later(None, print)
    with pytest.raises(TypeError):
        loop.call_later("soon", print)
    with pytest.raises(TypeError, match="unexpected keyword"):
        loop.call_later(1, print, colour="red")
    with pytest.raises(TypeError):
        loop.call_at(loop.time())
    assert len(loop._scheduled) == 0


def test_many_cancelled_timers_are_compacted(loop):
    handles = [loop.call_later(100 + i, print) for i in range(300)]
    for h in handles[:200]:
        h.cancel()
    assert loop._timer_cancelled_count == 200
    run_briefly(loop)
    # As asyncio: once most of a large heap is cancelled, it is rebuilt
    # without them, and they are no longer scheduled.
    assert len(loop._scheduled) == 100
    assert loop._timer_cancelled_count == 0
    assert not any(h._scheduled for h in handles[:200])
    assert all(h._scheduled for h in handles[200:])


def test_cancelled_timers_at_the_head_are_dropped(loop):
    head = loop.call_later(50, print)
    tail = loop.call_later(60, print)
    head.cancel()
    loop.call_soon(loop.stop)
    loop.run_forever()
    assert list(loop._scheduled) == [tail]
    assert not head._scheduled and loop._timer_cancelled_count == 0


def test_a_fired_timer_is_no_longer_scheduled(loop):
    t = loop.call_later(0, print)
    run_briefly(loop, 0.005)
    assert not t._scheduled
    t.cancel()  # cancelling it afterwards does not count it as on the heap
    assert loop._timer_cancelled_count == 0


# ---------------------------------------------------------------- running handles

def test_timers_run_in_their_context(loop):
    var = contextvars.ContextVar("var", default="unset")
    ctx = contextvars.copy_context()
    ctx.run(var.set, "timer ctx")
    seen = []
    loop.call_later(0, lambda: seen.append(var.get()), context=ctx)
    var.set("current")
    loop.call_later(0, lambda: seen.append(var.get()))  # a copy of the current one
    var.set("changed later")
    run_briefly(loop, 0.005)
    assert seen == ["timer ctx", "current"]


def test_a_callback_may_cancel_its_own_handle(loop):
    seen = []
    holder = {}

    def cb(tag):
        holder["h"].cancel()  # drops the handle's callback and args while they run
        seen.append(tag)

    holder["h"] = loop.call_soon(cb, "ran")
    run_briefly(loop)
    assert seen == ["ran"] and holder["h"].cancelled()


def test_errors_in_timer_callbacks_go_to_the_exception_handler(loop):
    reported = []
    loop.set_exception_handler(lambda lp, context: reported.append(context))

    def boom():
        raise ValueError("boom")

    t = loop.call_later(0, boom)
    run_briefly(loop, 0.005)
    [context] = reported
    assert context["handle"] is t
    assert isinstance(context["exception"], ValueError)
    assert context["message"].startswith("Exception in callback ")
    assert "boom" in context["message"]


def test_keyboard_interrupt_leaves_the_rest_queued(loop):
    seen = []

    def interrupt():
        raise KeyboardInterrupt

    loop.call_soon(interrupt)
    loop.call_soon(seen.append, "after")
    with pytest.raises(KeyboardInterrupt):
        loop.run_forever()
    assert len(loop._ready) == 1
    run_briefly(loop)
    assert seen == ["after"]


def test_handles_of_other_types_in_the_ready_queue_run_through_their_run(loop):
    seen = []

    class Custom(asyncio.Handle):
        __slots__ = ()

        def _run(self):
            seen.append("custom _run")
            super()._run()

    loop._ready.append(Custom(seen.append, ("callback",), loop, None))
    run_briefly(loop)
    assert seen == ["custom _run", "callback"]


def test_cycles_through_handles_are_collected(loop):
    class Holder:
        pass

    holder = Holder()
    holder.timer = loop.call_later(1000, print, holder)  # timer -> args -> holder -> timer
    holder.ready = loop.call_soon(print, holder)
    gone = weakref.ref(holder)
    handle_gone = weakref.ref(holder.timer)
    loop._scheduled.clear()
    loop._ready.clear()
    del holder
    gc.collect()
    assert gone() is None and handle_gone() is None


# ---------------------------------------------------------------- the queue objects

def test_the_ready_queue_behaves_as_asyncio_uses_its_deque(loop):
    ready = loop._ready
    assert len(ready) == 0 and not ready
    h = loop.call_soon(print)
    assert len(ready) == 1 and ready and list(ready) == [h]
    assert ready.popleft() is h
    with pytest.raises(IndexError):
        ready.popleft()
    loop.call_soon(print)
    ready.clear()
    assert not ready


def test_closing_clears_the_queues_and_refuses_new_work():
    loop = erlang.new_event_loop()
    loop.call_soon(print)
    loop.call_later(10, print)
    loop.close()
    assert loop.is_closed()
    assert len(loop._ready) == 0 and len(loop._scheduled) == 0
    for schedule in (lambda: loop.call_soon(print), lambda: loop.call_later(1, print),
                     lambda: loop.call_at(1, print)):
        with pytest.raises(RuntimeError, match="Event loop is closed"):
            schedule()

    async def nothing():
        pass

    coro = nothing()
    with pytest.raises(RuntimeError, match="Event loop is closed"):
        loop.create_task(coro)
    coro.close()


# ---------------------------------------------------------------- debug mode

def test_debug_mode_timers_record_where_they_were_made(loop):
    loop.set_debug(True)
    t = loop.call_later(10, print)
    assert isinstance(t, asyncio.TimerHandle)
    assert t._source_traceback[-1].name == "test_debug_mode_timers_record_where_they_were_made"
    t2 = loop.call_at(loop.time() + 10, print)
    assert t2._source_traceback[-1].name == "test_debug_mode_timers_record_where_they_were_made"

    async def coro():
        pass

    c = coro()
    with pytest.raises(TypeError, match="coroutines cannot be used with call_at"):
        loop.call_later(1, c)
    c.close()
    t.cancel()
    t2.cancel()
    assert loop._timer_cancelled_count == 2
    loop.set_debug(False)
    assert not loop.get_debug()


# ---------------------------------------------------------------- create_task

def test_create_task_name_and_context(loop):
    var = contextvars.ContextVar("var", default="unset")
    ctx = contextvars.copy_context()
    ctx.run(var.set, "task ctx")

    async def read():
        return var.get()

    task = loop.create_task(read(), name="reader", context=ctx)
    assert isinstance(task, asyncio.Task) and task.get_name() == "reader"
    assert loop.run_until_complete(task) == "task ctx"
    coro = read()
    with pytest.raises(TypeError, match="unexpected keyword"):
        loop.create_task(coro, colour="red")
    coro.close()


def test_create_task_uses_the_task_factory(loop):
    made = []

    def factory(lp, coro, **kwargs):
        made.append(kwargs)
        return asyncio.Task(coro, loop=lp, **kwargs)

    async def one():
        return 1

    loop.set_task_factory(factory)
    assert loop.get_task_factory() is factory
    task = loop.create_task(one(), name="made")
    assert loop.run_until_complete(task) == 1 and task.get_name() == "made"
    assert made == [{}]
    loop.set_task_factory(None)
    assert loop.get_task_factory() is None
    assert loop.run_until_complete(loop.create_task(one())) == 1
    assert len(made) == 1


def test_subclasses_keep_their_overrides():
    calls = []

    class Counting(erlang.ErlangEventLoop):
        def call_soon(self, callback, *args, context=None):
            calls.append("call_soon")
            return super().call_soon(callback, *args, context=context)

        def call_at(self, when, callback, *args, context=None):
            calls.append("call_at")
            return super().call_at(when, callback, *args, context=context)

    loop = Counting()
    try:
        loop.call_later(0, loop.stop)  # asyncio's call_later calls self.call_at
        loop.run_forever()
        loop.call_soon(loop.stop)
        loop.run_forever()
    finally:
        loop.close()
    assert calls == ["call_at", "call_soon"]


def test_task_steps_and_future_callbacks_take_the_native_path(loop):
    # asyncio's C Task and Future schedule through loop.call_soon with a
    # context: those handles must be the loop's own C ones.
    native_handle = type(loop.call_soon(print))
    loop._ready.clear()
    assert native_handle is not asyncio.Handle and issubclass(native_handle, asyncio.Handle)

    async def step():
        await asyncio.sleep(0)

    task = loop.create_task(step())
    [first] = list(loop._ready)
    assert type(first) is native_handle and first._callback.__self__ is task
    fut = loop.create_future()
    fut.add_done_callback(lambda f: None)
    fut.set_result(1)
    assert all(type(h) is native_handle for h in loop._ready)
    timer = loop.call_later(10, print)
    assert type(timer) is not asyncio.TimerHandle and isinstance(timer, asyncio.TimerHandle)
    loop.run_until_complete(task)


def test_a_loop_that_failed_to_start_is_closed_quietly(monkeypatch):
    import sys
    import threading

    unraisable = []
    monkeypatch.setattr(sys, "unraisablehook", unraisable.append)
    failed = []

    def make():
        # Only the worker's main thread may make the worker's loop.
        try:
            erlang.ErlangEventLoop(_worker=True)
        except RuntimeError as e:
            failed.append(str(e))

    t = threading.Thread(target=make)
    t.start()
    t.join()
    gc.collect()  # the half-made loop's __del__ sees a closed loop
    assert len(failed) == 1 and "main thread" in failed[0]
    assert unraisable == []
