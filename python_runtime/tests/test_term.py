"""erlang.Term, Pid and Ref: opaque Erlang terms kept as external term format."""
import copy
import pickle

import pytest

from erlang import Pid, Ref, Term

# term_to_binary of a pid, a reference and a port from node vecgen@vm.
PID = bytes([131, 88, 100, 0, 9]) + b"vecgen@vm" + bytes([0, 0, 0, 85, 0, 0, 0, 0, 107, 2, 54, 130])
REF = (bytes([131, 90, 0, 3, 100, 0, 9]) + b"vecgen@vm"
       + bytes([107, 2, 54, 130, 0, 1, 201, 34, 195, 96, 0, 1, 242, 99, 54, 57]))
PORT = bytes([131, 89, 100, 0, 9]) + b"vecgen@vm" + bytes([0, 0, 0, 5, 107, 2, 54, 130])


def test_term_keeps_its_bytes():
    assert Term(PORT).etf == PORT
    assert Pid(PID).etf == PID and Ref(REF).etf == REF


def test_pid_and_ref_are_terms():
    assert isinstance(Pid(PID), Term) and isinstance(Ref(REF), Term)
    assert not isinstance(Pid(PID), Ref)


def test_equal_by_bytes():
    assert Pid(PID) == Pid(bytes(PID))
    assert Term(PORT) == Term(PORT)
    assert Pid(PID) != Ref(REF)
    assert Term(PORT) != Term(PORT[:-1] + b"\x00")


def test_term_is_never_equal_to_its_bytes_or_other_objects():
    assert Pid(PID) != PID
    assert Pid(PID) != "pid"
    assert Term(PORT) != None  # noqa: E711


def test_hash_follows_equality_so_terms_are_dict_keys():
    assert hash(Pid(PID)) == hash(Pid(bytes(PID)))
    owners = {Pid(PID): "a", Ref(REF): "b"}
    assert owners[Pid(bytes(PID))] == "a"
    assert owners[Ref(bytes(REF))] == "b"
    assert len({Term(PORT), Term(PORT)}) == 1


@pytest.mark.parametrize("bad", [b"", b"\x84abc", bytearray(PID), "\x83abc", None, 131])
def test_refuses_what_is_not_external_term_format_bytes(bad):
    with pytest.raises(TypeError, match="external term format"):
        Term(bad)


def test_term_cannot_be_changed():
    t = Pid(PID)
    with pytest.raises(AttributeError):
        t.etf = REF
    with pytest.raises(AttributeError):
        t.other = 1
    assert t.etf == PID


def test_term_attribute_cannot_be_deleted():
    # A term deleted from under a dict key would make the dict unusable.
    t = Pid(PID)
    with pytest.raises(AttributeError):
        del t.etf
    assert t.etf == PID and hash(t) == hash(Pid(PID))


def test_repr_names_the_class_and_bytes():
    assert repr(Pid(PID)) == f"Pid({PID!r})"
    assert repr(Ref(REF)) == f"Ref({REF!r})"
    assert repr(Term(PORT)) == f"Term({PORT!r})"


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
@pytest.mark.parametrize("cls,etf", [(Pid, PID), (Ref, REF), (Term, PORT)])
def test_pickles_to_the_same_class_and_bytes(protocol, cls, etf):
    back = pickle.loads(pickle.dumps(cls(etf), protocol))
    assert type(back) is cls and back == cls(etf)


def test_copies_are_equal_and_of_the_same_class():
    for back in (copy.copy(Ref(REF)), copy.deepcopy({"r": Ref(REF)})["r"]):
        assert type(back) is Ref and back == Ref(REF)
