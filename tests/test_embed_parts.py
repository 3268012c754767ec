"""The parts of ``embed`` on their own: packing, texts and keys, the cache, reply decoding, output."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

import llmframe
from llmframe._client import CallError
from llmframe._embed_cache import FOLDER, EmbeddingCache
from llmframe._embed_client import decode
from llmframe._embed_output import vector_array
from llmframe._embed_plan import EmbedPlanner
from llmframe._embed_texts import cut_to_tokens, embed_prefix, embed_texts
from llmframe._pricing import price_for
from llmframe._tokens import get_tokenizer


def test_batches_fill_up_to_the_item_and_token_limits() -> None:
    planner = EmbedPlanner([10] * 25, max_items=10, max_tokens=lambda: 1_000)
    sizes = []
    while (batch := planner.take()) is not None:
        sizes.append(len(batch.texts))
    assert sizes == [10, 10, 5]
    planner = EmbedPlanner([40, 40, 40, 5000, 30], max_items=100, max_tokens=lambda: 100)
    batches = []
    while (batch := planner.take()) is not None:
        batches.append((batch.texts, batch.input_tokens))
    assert batches == [([0, 1], 80), ([2, 4], 70)] and planner.too_large == [3]


def test_a_split_batch_goes_again_in_halves_before_new_texts() -> None:
    planner = EmbedPlanner([1] * 6, max_items=4, max_tokens=lambda: 100)
    first = planner.take()
    assert first is not None
    planner.split(first)
    assert [planner.take().texts for _ in range(3)] == [[0, 1], [2, 3], [4, 5]]  # type: ignore[union-attr]
    assert planner.stop() == []


def test_keys_cover_model_dimensions_and_text_only() -> None:
    tok = get_tokenizer("text-embedding-3-small")
    a = embed_texts(["x", "y", "x", None], embed_prefix("m", 8), limit=100, truncate=False, tokenizer=tok)
    assert a.digests[:16] == a.digests[32:48] != a.digests[16:32]
    assert a.skipped == {3}
    for prefix in (embed_prefix("m", 16), embed_prefix("m2", 8), embed_prefix("m", None)):
        b = embed_texts(["x"], prefix, limit=100, truncate=False, tokenizer=tok)
        assert b.digests != a.digests[:16]


def test_cut_to_tokens_keeps_the_longest_prefix_that_fits() -> None:
    tok = get_tokenizer("text-embedding-3-small")
    text = "alpha beta gamma " * 50
    cut = cut_to_tokens(text, 20, tok)
    assert tok.count(cut) <= 20 < tok.count(text[: len(cut) + 1]) and text.startswith(cut)


def test_the_cache_finds_what_it_buffered_and_wrote_and_a_lookup_writes_nothing(tmp_path: Path) -> None:
    clock = [0.0]
    cache = EmbeddingCache(tmp_path, flush_seconds=2.0, clock=lambda: clock[0])
    keys = bytes(range(32))
    vecs = np.arange(8, dtype=np.float32).reshape(2, 4)
    assert cache.lookup(keys).hits == 0 and not (tmp_path / FOLDER).exists()  # no folder made by a lookup
    cache.add(keys, "m", vecs)
    assert not list((tmp_path / FOLDER).glob("seg-*.arrow"))  # buffered: 2 s have not passed
    found = cache.lookup(keys[16:] + bytes(16) + keys[:16])
    assert found.positions.tolist()[1] == -1 and np.array_equal(found.vectors[found.positions[[0, 2]]], vecs[::-1])
    clock[0] = 2.5
    cache.add(bytes(range(100, 116)), "m", vecs[:1])  # due: everything is written
    assert len(list((tmp_path / FOLDER).glob("seg-*.arrow"))) == 1
    fresh = EmbeddingCache(tmp_path)
    assert fresh.lookup(keys + bytes(range(100, 116))).hits == 3
    assert fresh.lookup(keys, dims=8).hits == 0  # another length is another lookup
    table = llmframe.read_embeddings(tmp_path)
    assert table.schema.field("vector").type == pa.list_(pa.float32(), 4) and table.num_rows == 3


def test_vectors_of_another_length_for_the_same_keys_are_an_error(tmp_path: Path) -> None:
    cache = EmbeddingCache(tmp_path)
    keys = bytes(range(16))
    cache.add(keys, "m", np.ones((1, 4), np.float32))
    cache.add(keys, "m", np.ones((1, 6), np.float32))
    cache.close()
    assert len(list((tmp_path / FOLDER).glob("seg-*.arrow"))) == 2  # one segment per length
    with pytest.raises(llmframe.CacheError, match="changed length"):
        cache.lookup(keys)
    found = cache.lookup(keys, dims=6)  # every row found, in one run: slices of the segment, no copy
    assert found.hits == 1 and found.aligned is not None and found.aligned.type == pa.list_(pa.float32(), 6)
    with pytest.raises(llmframe.CacheError, match="dims="):
        llmframe.read_embeddings(tmp_path)
    assert llmframe.read_embeddings(tmp_path, dims=4).num_rows == 1


def test_a_fully_cached_lookup_slices_the_segments_and_a_partial_one_copies(tmp_path: Path) -> None:
    cache = EmbeddingCache(tmp_path)
    keys = [bytes([i]) * 16 for i in range(1, 7)]
    vecs = np.arange(24, dtype=np.float32).reshape(6, 4)
    cache.add(b"".join(keys[:3]), "m", vecs[:3])
    cache.add(b"".join(keys[3:]), "m", vecs[3:])
    cache.close()
    order = [4, 5, 0, 1, 2, 3]  # two runs, across two segments
    found = EmbeddingCache(tmp_path).lookup(b"".join(keys[i] for i in order))
    assert found.aligned is not None and found.aligned.num_chunks >= 2
    assert np.array_equal(np.asarray(found.aligned.combine_chunks().flatten()).reshape(6, 4), vecs[order])
    partial = EmbeddingCache(tmp_path).lookup(keys[2] + bytes(16) + keys[5])
    assert partial.aligned is None and partial.positions.tolist() == [0, -1, 1]
    assert np.array_equal(partial.vectors, vecs[[2, 5]])


def _body(order: list[int], vectors: np.ndarray, tokens: int = 7) -> bytes:
    data = [{"object": "embedding", "index": i,
             "embedding": base64.b64encode(vectors[i % 3].astype("<f4").tobytes()).decode()} for i in order]  # fmt: skip
    return json.dumps({"data": data, "usage": {"prompt_tokens": tokens}}).encode()


def test_a_reply_is_placed_by_index_and_checked() -> None:
    vectors = np.arange(12, dtype=np.float32).reshape(3, 4)
    matrix, tokens = decode(_body([2, 0, 1], vectors), 3)
    assert np.array_equal(matrix, vectors) and tokens == 7
    for order in ([0, 1], [0, 1, 1], [0, 1, 5]):
        with pytest.raises(CallError) as caught:
            decode(_body(order, vectors), 3)
        assert caught.value.retryable and caught.value.kind == "server"
    ragged = json.loads(_body([0, 1, 2], vectors))
    ragged["data"][1]["embedding"] = [0.5, 0.5]
    with pytest.raises(CallError, match="differ in length"):
        decode(json.dumps(ragged).encode(), 3)
    with pytest.raises(CallError, match="unreadable"):
        decode(b"<html>", 3)


def test_embedding_matrix_takes_what_people_hold_and_refuses_nulls() -> None:
    X = np.arange(6, dtype=np.float32).reshape(3, 2)
    array = vector_array(X, np.ones(3, dtype=bool), 2)
    assert np.shares_memory(llmframe.embedding_matrix(array), X)
    assert np.array_equal(llmframe.embedding_matrix([[0, 1], [2, 3], [4, 5]]), X)
    assert np.array_equal(llmframe.embedding_matrix(pa.array([[0.0, 1.0], [2.0, 3.0], [4.0, 5.0]])), X)
    with pytest.raises(llmframe.ConfigError, match="no vector"):
        llmframe.embedding_matrix(vector_array(X, np.array([True, False, True]), 2))


def test_embedding_models_have_prices() -> None:
    for model, per_1m in (("text-embedding-3-small", 0.02), ("text-embedding-3-large", 0.13),
                          ("text-embedding-ada-002", 0.10)):  # fmt: skip
        price = price_for(model)
        assert price is not None and price.cost(1_000_000, 0) == pytest.approx(per_1m)
