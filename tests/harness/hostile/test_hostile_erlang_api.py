"""Attack: reach the node through the pool's Erlang API. The job calls
registered functions, runs code on the node through rpc, sends to a
registered process, writes shared state, publishes. A job's process has no
channel to the node: every one of these raises RuntimeError, and the
worker (which has the channel) never sees the job's requests."""
import pytest

from hostile_kit import MODES, NODES, assert_healthy, job, start

ATTACK = r"""
import erlang, hornbeam_erlang
attempts = {
    'call': lambda: erlang.call('anything', 1),
    'rpc_call': lambda: hornbeam_erlang.rpc_call(hornbeam_erlang.node(), 'os', 'cmd', ['id']),
    'rpc_cast': lambda: hornbeam_erlang.rpc_cast(hornbeam_erlang.node(), 'init', 'stop', []),
    'send': lambda: erlang.send(erlang.Atom('init'), 'stop'),
    'state_set': lambda: hornbeam_erlang.state_set('key', 'value'),
    'publish': lambda: hornbeam_erlang.publish('topic', 'message'),
}
outcome = {}
for name, attempt in attempts.items():
    try:
        attempt()
        outcome[name] = 'reached'
    except RuntimeError as e:
        outcome[name] = 'RuntimeError'
    except Exception as e:
        outcome[name] = type(e).__name__
outcome
"""


@pytest.mark.parametrize("node", NODES)
@pytest.mark.parametrize("mode", MODES)
def test_a_job_has_no_erlang_api(spawn, mode, node):
    requests = []
    w = start(spawn, mode, node)
    w.on_request = requests.append  # any request the worker would send to Erlang
    status, outcome, _ = job(w, mode, ATTACK)
    assert status == "ok", outcome
    assert outcome == {k: "RuntimeError" for k in
                       ("call", "rpc_call", "rpc_cast", "send", "state_set", "publish")}
    assert requests == []
    assert_healthy(w, mode)
