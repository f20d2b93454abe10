"""Hornbeam's ``hornbeam_erlang`` module on pyport: the same names with the
same behaviour, backed by the ``erlang`` package (docs/erlang-integration.md).

Shared state, counters, pub/sub, distribution, and registered Erlang
functions (``call`` waits for the result, ``cast`` does not)."""
from erlang import (call, cast, node, nodes, publish, receive_pubsub, rpc_call, rpc_cast,
                    state_clear, state_decr, state_delete, state_get, state_get_multi,
                    state_incr, state_keys, state_set, subscribe, unsubscribe)

__all__ = [
    "state_get", "state_set", "state_delete", "state_incr", "state_decr",
    "state_get_multi", "state_keys", "state_clear",
    "rpc_call", "rpc_cast", "nodes", "node",
    "publish", "subscribe", "unsubscribe", "receive_pubsub",
    "call", "cast",
]
