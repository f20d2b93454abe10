"""Python side of py_shared_dict_SUITE."""
from erlang import SharedDict


def put(h, key, value):
    d = SharedDict(h)
    d[key] = value
    return d[key]


def get(h, key):
    return SharedDict(h).get(key, "missing")


def ops(h):
    d = SharedDict(h)
    d["a"] = 1
    d["b"] = [1, 2, {"x": None}]
    out = ["a" in d, "zz" in d, sorted(d.keys()), d["b"], len(d)]
    del d["a"]
    try:
        d["a"]
    except KeyError:
        out.append("keyerror")
    try:
        del d["a"]
    except KeyError:
        out.append("del_keyerror")
    try:
        d[1] = 2
    except TypeError:
        out.append("typeerror")
    return out


def fill(h, n):
    d = SharedDict(h)
    try:
        for i in range(n):
            d[f"k{i}"] = i
    except ValueError as e:
        return (i, str(e))
    return (n, "")


def after_destroy(h):
    d = SharedDict(h)
    try:
        d["x"] = 1
    except RuntimeError as e:
        return str(e)


def destroy(h):
    SharedDict(h).destroy()
