"""``apply``, ``classify`` and ``embed`` on a Dask DataFrame: the eager call, once per partition.

:func:`dask_call` checks the call on the driver (on ``ddf._meta``, no request),
and returns ``ddf.map_partitions`` of :func:`run_partition` with the ``meta``
the eager call's empty result has: nothing runs until the graph is computed.
Each partition, in whichever worker holds it, runs the pandas call itself
(:meth:`LazyCall.run`): the same engine, cache, limiter and report as a local
call, and then stores its report for :mod:`._dask_report`.

Workers do not see the driver's ``configure()`` defaults or its environment, so
the call is resolved here and sent whole: every option that differs from the
built-in default, and ``cache=`` as the folder the driver would use (the workers
must see that folder, as they must to share answers). Options travel pickled;
an ``openai`` client does not, so ``client=`` is refused.
"""

from __future__ import annotations

import dataclasses
import time
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ._cache_admin import resolve_cache_dir
from ._cache_fs import is_url
from ._config import Options
from ._dask_report import RUNS, prune_runs, write_part
from ._errors import ConfigError, RunError
from ._lazy import Kind, LazyCall, plan_call
from ._report import RunReport
from ._run import report_of

__all__ = ["RUN", "dask_call", "run_partition"]

#: The attribute of the returned Dask DataFrame naming its run's report folder.
RUN = "_llmframe_run"
#: Not sent: the answer's form is rebuilt from the call's own arguments, and a client cannot travel.
_NOT_SENT = ("schema", "client")


def _sent_options(given: Mapping[str, Any], opts: Options, cache: str | bool) -> dict[str, Any]:
    """The call's options as each partition gets them: given ones as they are, the driver's
    defaults filled in, the cache as a folder or URL, and no progress bar in the workers."""
    if opts.client is not None:
        raise ConfigError("client= cannot be sent to Dask workers (an openai client does not pickle); "
                          "pass base_url= and api_key= instead, and each worker makes its own client")  # fmt: skip
    sent = dict(given)
    builtin = Options()
    for f in dataclasses.fields(Options):
        if f.name not in sent and f.name not in _NOT_SENT and getattr(opts, f.name) != getattr(builtin, f.name):
            sent[f.name] = getattr(opts, f.name)
    sent["cache"] = cache
    sent.setdefault("progress", False)
    _check_pickles(sent)
    return sent


def _check_pickles(arguments: Mapping[str, Any]) -> None:
    import cloudpickle

    for name, value in arguments.items():
        try:
            cloudpickle.dumps(value)
        except Exception as exc:
            raise ConfigError(f"{name}= cannot be sent to Dask workers: it does not pickle "
                              f"({type(exc).__name__}: {exc}); pass a plain value instead") from None  # fmt: skip


def run_partition(part: Any, call: LazyCall, reports: str | None, partition_info: Any = None) -> Any:
    """One partition's answers: ``call`` on the pandas frame ``part``, its report stored."""
    started = time.time()
    try:
        out = call.run(part)
    except RunError as error:  # errors="raise": the partition's report still counts
        _store(reports, partition_info, error.report, started)
        raise
    _store(reports, partition_info, report_of(out), started)
    return out


def _store(reports: str | None, partition_info: Any, report: Any, started: float) -> None:
    if reports is not None and isinstance(report, RunReport) and partition_info is not None:
        write_part(reports, int(partition_info["number"]), report, started, time.time())


def dask_call(ddf: Any, kind: Kind, template: str, arguments: Mapping[str, Any]) -> Any:
    """The lazy Dask DataFrame of ``kind`` (``"apply"``, ``"classify"``, ``"embed"``) on ``ddf``."""
    options = set(Options.__dataclass_fields__) - {"schema"}  # schema= is the call's own argument
    given = {k: v for k, v in arguments.items() if k in options}
    own = {k: v for k, v in arguments.items() if k not in options}
    opts, meta, _ = plan_call(ddf._meta, kind, template, arguments)
    if is_url(opts.cache):
        # Every worker opens the URL itself (segments there, its logs and claims on its own
        # machine); the reports go to the temp folder, which all of a LocalCluster shares.
        cache: str | bool = str(opts.cache)
        runs = _temp_runs()
    else:
        folder = resolve_cache_dir(opts.cache)
        cache = str(folder) if folder is not None else False
        runs = folder / RUNS if folder is not None else _temp_runs()
    prune_runs(runs)  # the folders of runs whose report nobody read, a day on
    reports = runs / uuid.uuid4().hex[:16]
    sent = _sent_options(given, opts, cache)
    _check_pickles(own)
    call = LazyCall(kind, template, {**own, **sent})
    out = ddf.map_partitions(run_partition, call, str(reports), meta=meta, enforce_metadata=False,
                             align_dataframes=False)  # fmt: skip
    object.__setattr__(out, RUN, str(reports))
    return out


def _temp_runs() -> Path:
    """Where reports go when the run has no cache folder: this machine's temp folder."""
    import tempfile

    return Path(tempfile.gettempdir()) / "llmframe-runs"
