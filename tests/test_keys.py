from __future__ import annotations

import hashlib

from llmframe._keys import KEY_VERSION, call_prefix, row_digests, row_keys


def prefix(**kw: object) -> bytes:
    base: dict[str, object] = {"model": "m", "template": "T {a}", "system": None, "params": None}
    base.update(kw)
    return call_prefix(**base)  # type: ignore[arg-type]


def test_key_depends_on_values_not_position() -> None:
    p = prefix()
    k1 = row_keys(p, [["x", "y", "z"]])
    k2 = row_keys(p, [["z", "x"]])
    assert k1[0] == k2[1] and k1[2] == k2[0]
    assert len(set(k1)) == 3 and all(k and len(k) == 32 for k in k1)


def test_key_depends_on_every_setting() -> None:
    keys = {
        row_keys(prefix(**kw), [["x"]])[0]
        for kw in (
            {},
            {"model": "m2"},
            {"template": "U {a}"},
            {"system": "be brief"},
            {"params": {"temperature": 0}},
        )
    }
    assert len(keys) == 5


def test_param_order_does_not_matter() -> None:
    a = prefix(params={"temperature": 0, "seed": 1})
    b = prefix(params={"seed": 1, "temperature": 0})
    assert a == b


def test_length_prefix_prevents_collisions() -> None:
    p = prefix()
    assert row_keys(p, [["ab"], ["c"]]) != row_keys(p, [["a"], ["bc"]])


def test_null_rows_have_no_key() -> None:
    assert row_keys(prefix(), [["x", None], ["y", "z"]])[1] is None
    assert row_keys(prefix(), [[None]]) == [None]


def reference_key(prefix: bytes, values: list[str]) -> str:
    """The key as documented: BLAKE2b-128 of the call prefix, then each value length-prefixed."""
    h = hashlib.blake2b(prefix, digest_size=16)
    for v in values:
        b = v.encode()
        h.update(len(b).to_bytes(8, "little") + b)
    return h.hexdigest()


def test_single_and_multi_field_paths_hash_the_documented_way() -> None:
    # One field takes a fast path of its own; both must give the documented key.
    p = prefix()
    values = ["x", "", "naïve 😀", "a" * 300]
    assert row_keys(p, [values]) == [reference_key(p, [v]) for v in values]
    pairs = [("x", "y"), ("", "z"), ("ab", "c"), ("a", "bc")]
    columns = [[a for a, _ in pairs], [b for _, b in pairs]]
    assert row_keys(p, columns) == [reference_key(p, list(pair)) for pair in pairs]
    digests, nulls = row_digests(p, [values])
    assert digests.hex() == "".join(reference_key(p, [v]) for v in values) and nulls == []


def test_keys_do_not_change_between_versions() -> None:
    # Pinned: a change here orphans every cache on disk. If it is meant, bump KEY_VERSION.
    assert KEY_VERSION == "1"
    assert row_keys(prefix(), [["x"]]) == ["e88ef1829001ba3cc0ace2058ef89629"]
    assert row_keys(prefix(), [["x"], ["y"]]) == ["d67ecc0a781e7ef3a2aff7e230375dd8"]
