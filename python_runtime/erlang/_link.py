"""The worker's primitives (the builtin ``_erlang`` module, see
port_worker/erlang_module.hpp), or stand-ins that say why nothing works in a
plain Python process."""
from __future__ import annotations

# Annotations only: typing is not imported at run time (worker start-up).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

try:
    import _erlang
except ImportError:  # not inside a pyport worker
    _erlang = None

_NOT_IN_WORKER = ("this needs a pyport worker: the erlang module talks to Erlang only "
                  "inside a pyport worker process")


def connected() -> bool:
    """True inside a worker that talks to Erlang."""
    return _erlang is not None and _erlang.connected()


if _erlang is not None:
    request = _erlang.request
    notify = _erlang.notify
    start_request = _erlang.start_request
    take_reply = _erlang.take_reply
    open_mailbox = _erlang.open_mailbox
    close_mailbox = _erlang.close_mailbox
    receive = _erlang.receive
    watch = _erlang.watch
    watch_on_loop = _erlang.watch_on_loop
    next_completion = _erlang.next_completion
    consume_time_slice = _erlang.consume_time_slice
else:
    def _unavailable(*_args: Any) -> Any:
        raise RuntimeError(_NOT_IN_WORKER)

    request = notify = start_request = take_reply = _unavailable
    open_mailbox = close_mailbox = receive = watch = watch_on_loop = _unavailable
    next_completion = consume_time_slice = _unavailable


def cancel(mailbox: int) -> None:
    """Gives up on the request whose reply goes to ``mailbox`` (from
    ``start_request``): the mailbox is closed, and Erlang is told to end
    the process that serves the request (NOTIFY ``cancel``). A reply
    already on its way finds no mailbox and is dropped."""
    close_mailbox(mailbox)
    try:
        notify("cancel", [mailbox])
    except ConnectionError:  # the link closed: nothing serves it any more
        pass
