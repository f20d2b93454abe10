"""Helpers of hornbeam_pubsub_SUITE: Hornbeam's publish from a worker."""
import erlang
import hornbeam_erlang as hb


def publish(topic, message):
    return hb.publish(topic, message)


def publish_atom(name, message):
    return hb.publish(erlang.Atom(name), message)


def publish_atom_error(name, message):
    try:
        hb.publish(erlang.Atom(name), message)
        return None
    except BaseException as e:  # noqa: BLE001 (the test looks at it)
        return [type(e).__name__, str(e), isinstance(e, RuntimeError)]


def members(topic, atom=False):
    t = erlang.Atom(topic) if atom else topic
    return [hb.get_members(t), hb.get_local_members(t)]


def subscribe_and_receive(topic):
    hb.subscribe(topic)
    got = hb.receive_pubsub(timeout=10)
    hb.unsubscribe(topic)
    return got
