from __future__ import annotations

from llmframe._keys import call_prefix, row_keys


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
            {"output_format": "json"},
        )
    }
    assert len(keys) == 6


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


def test_single_and_multi_field_paths_agree_on_stability() -> None:
    p = prefix()
    assert row_keys(p, [["x"]]) == row_keys(p, [["x"]])
