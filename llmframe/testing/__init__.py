"""A real fake OpenAI-compatible server for tests, demos, notebooks and benchmarks.

:class:`FakeServer` listens on ``127.0.0.1`` and speaks the OpenAI HTTP API
(``/v1/chat/completions``, ``/v1/embeddings``, ``/v1/models``), so the real
``openai`` client, and llmframe on top of it, run end to end without an API
key or a network. Its answers are deterministic (:func:`expected_answer`, and
:func:`expected_value` for every field of a structured answer to a JSON
schema), so a test knows what every row must get, including rows answered in
packed requests; it enforces RPM/TPM limits with OpenAI's 429 bodies and headers; and
it injects :class:`Faults` (5xx, hangs, garbage bodies, damaged packed
answers) at chosen rates; with :class:`Degrade` it plays a model whose
packed answers get worse as batches grow (for ``llmframe.calibrate``); and it
serves OpenAI's Batch API (``/v1/files``, ``/v1/batches``) on an accelerated
clock, each batched request answered exactly as the live one::

    >>> import openai
    >>> from llmframe.testing import FakeServer, expected_answer
    >>> with FakeServer(rpm=600) as server:
    ...     client = openai.OpenAI(base_url=server.base_url, api_key=server.api_key)
    ...     reply = client.chat.completions.create(
    ...         model="gpt-4o-mini", messages=[{"role": "user", "content": "Hi"}]
    ...     )
    >>> reply.choices[0].message.content == expected_answer("Hi")
    True

With pytest, the ``fake_server`` and ``fake_server_factory`` fixtures of
:mod:`llmframe.testing.pytest_plugin` are registered automatically.
"""

from llmframe.testing._degrade import Degrade as Degrade  # public; see the note below
from llmframe.testing._faults import Faults
from llmframe.testing._model import expected_answer
from llmframe.testing._schema import expected_value
from llmframe.testing._server import FakeServer

__all__ = ["Degrade", "FakeServer", "Faults", "expected_answer", "expected_value"]
