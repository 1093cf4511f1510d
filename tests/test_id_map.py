"""IdMap, the compact sorted map of run ids unpack and its proof keep, against a plain dict."""

from __future__ import annotations

import random
import uuid
from collections import Counter

from exim_archive.id_map import IdMap
from exim_archive.proof import _copies


def test_id_map_answers_as_the_dict_it_was_made_of() -> None:
    rng = random.Random(7)
    plain = {uuid.UUID(int=rng.getrandbits(128)).hex: str(i) for i in range(3000)}
    ids = IdMap.of(plain)
    assert len(ids) == len(plain) and ids == plain
    assert list(ids) == sorted(plain)
    assert list(ids.items()) == sorted(plain.items())
    for key in rng.sample(sorted(plain), 200):
        assert ids[key] == plain[key] and key in ids
    for missing in ("", "0" * 32, "f" * 33, "zzz"):
        assert missing not in ids and ids.get(missing) is None
    asked = [*rng.sample(sorted(plain), 5), "nope"]
    assert ids.values_of(asked) == [plain.get(k) for k in asked]
    assert 3 not in ids  # a key of another type is not in it


def test_an_empty_id_map() -> None:
    for empty in (IdMap(), IdMap.of({}), IdMap.of([])):
        assert len(empty) == 0 and list(empty) == [] and empty == {}
        assert "a" not in empty and empty.values_of(["a"]) == [None]


def test_the_proof_takes_the_smallest_copy_and_counts_the_rest() -> None:
    """The target's (run id, source run tag) pairs, in any order: each source run's copy is its
    smallest run id, runs with more than one copy are counted, runs without the tag are the
    ones no unpack made; the same over many batches of pairs."""
    pairs = [("t3", "s1"), ("t1", "s1"), ("t2", "s2"), ("t9", None), ("t0", None), ("t5", "s1")]
    run_ids, copies, others = _copies(pairs)
    assert run_ids == {"s1": "t1", "s2": "t2"}
    assert copies == {"s1": 3}
    assert list(others) == ["t0", "t9"]
    many = [(f"t{i:06d}", f"s{i // 2:06d}" if i % 3 else None) for i in range(25_001)][::-1]
    run_ids, copies, others = _copies(many)
    tagged = [(t, s) for t, s in many if s is not None]
    expect: dict[str, str] = {}
    for t, s in sorted(tagged):
        expect.setdefault(s, t)
    assert run_ids == expect
    counted = Counter(s for _, s in tagged)
    assert copies == {s: n for s, n in counted.items() if n > 1}
    assert list(others) == sorted(t for t, s in many if s is None)
    assert _copies([]) == (IdMap(), {}, IdMap())
