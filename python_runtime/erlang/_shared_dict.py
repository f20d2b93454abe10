"""``erlang.SharedDict``: a dict shared by Erlang and every worker, kept
in the Erlang node (``py:shared_dict_new/0``, docs/channels.md). Keys are
``str`` (or ``bytes``); values are anything that converts to an Erlang
term and back (not pickled)."""
from __future__ import annotations

# Annotations only: typing is not imported at run time (worker start-up).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

from . import _link
from ._channels import handle_token

__all__ = ["SharedDict"]

_MISSING = object()


def _key(key: Any) -> Any:
    if isinstance(key, (str, bytes)):
        return key
    raise TypeError(f"SharedDict keys are str or bytes, not {type(key).__name__}")


class SharedDict:
    """A shared dict from a ``py:shared_dict_new/0`` handle. Using it after
    ``destroy`` (or once its Erlang owner exited) raises ``RuntimeError``."""

    def __init__(self, handle: Any) -> None:
        self._token = handle_token(handle, "py_shared_dict", "shared dict")

    def _request(self, verb: str, args: list) -> Any:
        try:
            return _link.request("handle", [verb, self._token, args])
        except ValueError as e:
            if getattr(e, "reason", None) in ("unknown_handle",):
                raise RuntimeError("the shared dict was destroyed") from None
            raise
        except Exception as e:
            if getattr(e, "reason", None) == "destroyed":
                raise RuntimeError("the shared dict was destroyed") from None
            raise

    def get(self, key: Any, default: Any = None) -> Any:
        answer = self._request("get", [_key(key)])
        if isinstance(answer, tuple) and answer[0] == "found":
            return answer[1]
        return default

    def __getitem__(self, key: Any) -> Any:
        value = self.get(key, _MISSING)
        if value is _MISSING:
            raise KeyError(key)
        return value

    def __setitem__(self, key: Any, value: Any) -> None:
        """Raises ``ValueError`` when the dict is full (its limits)."""
        self._request("set", [_key(key), value])

    def __delitem__(self, key: Any) -> None:
        if not self._request("del", [_key(key)]):
            raise KeyError(key)

    def __contains__(self, key: Any) -> bool:
        return self.get(key, _MISSING) is not _MISSING

    def keys(self) -> list[str]:
        return list(self._request("keys", []))

    def __iter__(self):
        return iter(self.keys())

    def __len__(self) -> int:
        return len(self.keys())

    def destroy(self) -> None:
        """Frees it for everyone now."""
        self._request("destroy", [])

    def __repr__(self) -> str:
        return f"<SharedDict {self._token[:6]}...>"
