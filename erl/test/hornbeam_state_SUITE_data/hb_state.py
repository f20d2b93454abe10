"""Helpers of hornbeam_state_SUITE: Hornbeam's state API from a worker."""
import erlang
import hornbeam_erlang as hb


def error_of(fn, *args, **kwargs):
    try:
        fn(*args, **kwargs)
        return None
    except BaseException as e:  # noqa: BLE001 (the test looks at it)
        return [type(e).__name__, isinstance(e, RuntimeError)]


def shortcuts():
    hb.set("sc:a", {"n": 1})
    out = [hb.get("sc:a"), hb.incr("sc:n"), hb.incr("sc:n", 4), hb.decr("sc:n"),
           hb.decr("sc:n", 2)]
    hb.delete("sc:a")
    out.append(hb.get("sc:a"))
    out.append(hb.state_incr("sc:n", delta=10))
    out.append(hb.state_decr("sc:n", delta=5))
    return out


def get(key):
    return hb.state_get(key)


def set(key, value):  # noqa: A001
    hb.state_set(key, value)
    return True


def keys(prefix=None):
    return hb.state_keys(prefix)


def get_multi(keys):
    return hb.state_get_multi(keys)


def incr_error(key):
    return error_of(hb.state_incr, key)


def set_error(key, value):
    return error_of(hb.state_set, key, value)


def atom_key():
    """A key that is an atom, and one that is a tuple."""
    hb.state_set(erlang.Atom("hb_atom_key"), 1)
    hb.state_set(("tuple", 2), 2)
    return True
