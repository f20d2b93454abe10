"""Messages to Erlang processes, and finding them."""
from __future__ import annotations

# Annotations only: typing is not imported at run time (worker start-up).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

from . import _link
from ._types import Pid


def send(dest: Any, message: Any) -> None:
    """Sends ``message`` to ``dest``: an ``erlang.Pid``, a registered name
    (str or Atom), or a ``(name, node)`` tuple. Raises ProcessError when
    ``dest`` is a local process that is not alive or a name nobody has
    registered; a message to another node is sent without that check, as
    Erlang's ``!`` does."""
    _link.request("send", [dest, message])


def whereis(name: str) -> Pid | None:
    """The pid registered as ``name`` on this node, or None."""
    return _link.request("whereis", [name])
