"""Sending one batch so that a kill never pays for it twice: write it down, upload, create.

A batch of the job is written down (status ``uploading``, with a new token)
before its file is uploaded under a name that carries the token; its file id is
written (status ``creating``) before the batch is created with the token in its
``metadata``; then its batch id. A process killed anywhere in between leaves a
state that :func:`recover` settles in the next one: the file is found again by
its name and the batch by its token (:class:`~._batch_client.BatchClient`), so
neither is sent twice; a file that was never stored is forgotten, and its rows
are planned again.

A refusal (4xx, or 5xx past the retries) is one clear error: the batch is
forgotten, its uploaded file deleted, and a job left without batches is not
recorded. Only a create whose outcome stays unknown (the lookup after it failed
too) keeps the batch written down, for the next call to find.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

from ._batch_client import TOKEN_KEY, BatchClient, LimitReached
from ._batch_state import SENDING, JobState, SentBatch, drop_job
from ._errors import AuthenticationError, ConfigError, EndpointError, LLMFrameError

__all__ = ["create", "record", "recover", "send"]


def record(state: JobState, folder: Path) -> None:
    """Save the job's state, once a batch of it exists (written down at least)."""
    if state.batches:
        state.save(folder)


async def send(client: BatchClient, state: JobState, folder: Path, sent: SentBatch, data: bytes) -> None:
    """Write ``sent`` down, upload ``data`` as its input file, and create its batch."""
    if not sent.token:
        sent.renew()
    sent.status = "uploading"
    state.batches.append(sent)
    record(state, folder)  # from here on a kill leaves a token to find the file by
    try:
        sent.input_file_id = await client.upload(sent.file_name(state.id), data)
    except LLMFrameError as exc:
        if not isinstance(exc, (AuthenticationError, ConfigError)):  # a 5xx may come after the file was stored
            with contextlib.suppress(LLMFrameError):
                if (stored := await client.find_file(sent.file_name(state.id), sent.since)) is not None:
                    await client.delete_file(stored)
        _forget(state, folder, sent)
        raise
    await create(client, state, folder, sent)


async def create(client: BatchClient, state: JobState, folder: Path, sent: SentBatch) -> None:
    """Create ``sent``'s batch from its uploaded file, or leave it ``queued`` while the
    enqueued-token limit holds."""
    if not sent.token:  # written by a version that kept none
        sent.renew()
    sent.status = "creating"
    record(state, folder)  # from here on a kill leaves a token to find the batch by
    batch: Any = None
    try:
        batch = await client.create(sent.input_file_id, {"llmframe_job": state.id, TOKEN_KEY: sent.token},
                                    since=sent.since)  # fmt: skip
    except LimitReached:  # tried again as this job's earlier batches (or others' work) finish
        sent.status = "queued"
    except (AuthenticationError, ConfigError):
        await _refused(client, state, folder, sent)
        raise
    except EndpointError as exc:
        try:  # a 5xx may come after the batch was made
            batch = await client.find_batch(sent.token, sent.since)
        except LLMFrameError:
            record(state, folder)
            raise EndpointError(f"{exc}; the batch may have been created: the same call again finds it (by the "
                                "token in its metadata) instead of creating another") from None  # fmt: skip
        if batch is None:
            await _refused(client, state, folder, sent)
            raise
    if batch is not None:
        sent.batch_id, sent.status = str(batch.id), str(batch.status)
    record(state, folder)


async def recover(client: BatchClient, state: JobState, folder: Path) -> None:
    """Settle the batches a killed process left written down but not known to exist: each
    file and batch found again (or made now), a file never stored forgotten."""
    for sent in [b for b in state.batches if not b.batch_id and b.status in SENDING]:
        if not sent.input_file_id:
            file_id = await client.find_file(sent.file_name(state.id), sent.since)
            if file_id is None:  # never stored: its rows are planned again
                state.batches.remove(sent)
                continue
            sent.input_file_id = file_id  # (no batch can exist: none is created before its file id is written)
        elif (found := await client.find_batch(sent.token, sent.since)) is not None:
            sent.batch_id, sent.status = str(found.id), str(found.status)
            continue
        await create(client, state, folder, sent)
    if state.batches:
        record(state, folder)
    else:
        drop_job(folder, state.id)


async def _refused(client: BatchClient, state: JobState, folder: Path, sent: SentBatch) -> None:
    """A batch the endpoint refused: its file deleted (best effort), the batch forgotten."""
    with contextlib.suppress(LLMFrameError):
        await client.delete_file(sent.input_file_id)
    _forget(state, folder, sent)


def _forget(state: JobState, folder: Path, sent: SentBatch) -> None:
    state.batches.remove(sent)
    if state.batches:
        record(state, folder)
    else:  # nothing was created: no job is recorded
        drop_job(folder, state.id)
