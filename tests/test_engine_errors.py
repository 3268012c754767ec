"""Errors a packed request can meet that only one of its rows causes."""

from __future__ import annotations

import json
from typing import Any

import openai
import pandas as pd

try:
    import httpx2 as httpx  # the transport of openai >= 3
except ImportError:  # pragma: no cover - openai 1.x/2.x
    import httpx  # type: ignore[no-redef]

TEMPLATE = "Label this: {text}"


def completion(content: str) -> dict[str, Any]:
    return {
        "id": "c", "object": "chat.completion", "created": 0, "model": "m",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                     "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 10, "completion_tokens": 2, "total_tokens": 12},
    }  # fmt: skip


def test_a_content_filter_on_one_row_fails_that_row_only() -> None:
    """The endpoint refuses (400) any request carrying one offending row: the packed batch
    is halved until that row goes alone, and every other row is answered."""
    sizes: list[int] = []

    def respond(request: Any) -> Any:
        body = json.loads(request.content)
        user = body["messages"][-1]["content"]
        if "forbidden" in user:
            return httpx.Response(400, json={"error": {"message": "content filtered", "type": "invalid_request_error"}})
        if body["messages"][0]["role"] == "system":  # packed: JSON lines with ids
            items = [json.loads(line) for line in user.splitlines()]
            sizes.append(len(items))
            return httpx.Response(200, json=completion(json.dumps({str(i["id"]): "ok " + i["text"] for i in items})))
        sizes.append(1)
        return httpx.Response(200, json=completion("ok " + user.removeprefix("Label this: ")))

    client = openai.AsyncOpenAI(api_key="k", base_url="http://endpoint.test/v1",
                                http_client=httpx.AsyncClient(transport=httpx.MockTransport(respond)))  # fmt: skip
    rows = [f"row {i}" for i in range(10)]
    rows[6] = "forbidden row"
    out = pd.DataFrame({"text": rows}).llm.apply(
        TEMPLATE, model="m", client=client, batch_size=5, progress=False, cache=False, error_column="error"
    )
    assert out["answer"].tolist()[:6] == [f"ok row {i}" for i in range(6)]
    assert pd.isna(out["answer"][6]) and out["error"][6].startswith("bad_request: HTTP 400: content filtered")
    assert out["answer"].tolist()[7:] == [f"ok row {i}" for i in range(7, 10)]
    assert out.llm.report.failed_rows == 1
