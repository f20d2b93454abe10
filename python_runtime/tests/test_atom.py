"""erlang.Atom: an Erlang atom that behaves as the str of its name."""
import copy
import json
import pickle

import pytest

from erlang import Atom


def test_atom_is_a_str_equal_to_its_name():
    a = Atom("ok")
    assert isinstance(a, str)
    assert a == "ok" and "ok" == a
    assert a != "error" and a != Atom("error")
    assert Atom("ok") == Atom("ok")


def test_atom_hashes_like_its_name_so_it_works_as_a_dict_key():
    assert hash(Atom("ok")) == hash("ok")
    assert {"ok": 1}[Atom("ok")] == 1
    assert {Atom("ok"): 1}["ok"] == 1
    assert Atom("ok") in {"ok", "error"}
    # An atom and a str with the same name are one key, not two.
    assert len({Atom("k"): 1, "k": 2}) == 1


def test_atom_keeps_its_type_where_str_operations_make_new_strings():
    a = Atom("ok")
    assert type(a) is Atom
    for derived in (a + "!", a.upper(), a[:1], str(a), f"{a}", "%s" % a):
        assert type(derived) is str
    assert str(a) == "ok"


def test_unicode_and_empty_names():
    assert Atom("ünïcode") == "ünïcode"
    assert Atom("") == "" and type(Atom("")) is Atom


def test_atom_repr_says_it_is_an_atom():
    assert repr(Atom("ok")) == "Atom('ok')"
    assert repr([Atom("a")]) == "[Atom('a')]"
    assert repr(Atom("it's")) == 'Atom("it\'s")'


def test_atom_has_no_instance_attributes():
    with pytest.raises(AttributeError):
        Atom("ok").extra = 1
    assert not hasattr(Atom("ok"), "__dict__")


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_atom_pickles_as_an_atom(protocol):
    back = pickle.loads(pickle.dumps(Atom("ok"), protocol))
    assert type(back) is Atom and back == "ok"


def test_atom_copies_as_an_atom():
    for back in (copy.copy(Atom("a")), copy.deepcopy([Atom("a")])[0]):
        assert type(back) is Atom and back == "a"


def test_atom_serialises_to_json_as_its_name():
    assert json.dumps({Atom("k"): Atom("v")}) == '{"k": "v"}'


def test_atoms_sort_with_strings():
    assert sorted([Atom("b"), "a", Atom("c")]) == ["a", "b", "c"]
