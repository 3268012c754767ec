"""``GET /v1/models`` and ``GET /v1/models/{model}``: the model names the server lists.

The list is fixed (:data:`MODELS`) and any single name is described. Which
chat models are *served* is a setting (``models=``), checked with the chat
request (see ``_requests``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from aiohttp import web

from llmframe.testing._requests import unauthorized
from llmframe.testing._settings import Settings

__all__ = ["MODELS", "Catalog"]

MODELS = (
    "gpt-4o-mini",
    "gpt-4o",
    "gpt-4.1-mini",
    "gpt-4.1-nano",
    "text-embedding-3-small",
    "text-embedding-3-large",
)


def _model_entry(name: str) -> dict[str, Any]:
    return {"id": name, "object": "model", "created": 1_700_000_000, "owned_by": "llmframe-fake"}


class Catalog:
    """The model endpoints; :meth:`list_models` and :meth:`get_model` are their aiohttp handlers."""

    def __init__(self, settings: Callable[[], Settings]) -> None:
        self._settings = settings

    async def list_models(self, request: web.Request) -> web.StreamResponse:
        denied = unauthorized(request, self._settings().api_keys)
        if denied is not None:
            return denied
        return web.json_response(
            {"object": "list", "data": [_model_entry(name) for name in MODELS]}
        )

    async def get_model(self, request: web.Request) -> web.StreamResponse:
        denied = unauthorized(request, self._settings().api_keys)
        if denied is not None:
            return denied
        return web.json_response(_model_entry(request.match_info["model"]))
