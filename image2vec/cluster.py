"""The command line on a Dask cluster: the client of ``--scheduler``, models mapped over images.

``--scheduler local:N`` starts a ``LocalCluster`` of N worker processes (one thread each) for the
length of a command; any other value is the address of a running ``dask.distributed``
scheduler (``tcp://host:8786``). On the cluster, feature extraction runs in shards on the
workers (:func:`image2vec.features.extract_features`), the fit's passes over the features are
Dask tree reductions (:meth:`image2vec.model.Image2Vec.fit`), and a fitted system, sent to the
workers once, summarizes and scores the images chunk by chunk (:class:`ClusterSystem`).
``distributed`` is an optional dependency (``pip install image2vec[dist]``), imported only here.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import logging
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import numpy as np

from image2vec.errors import Image2VecError
from image2vec.summary import Summary

if TYPE_CHECKING:
    import distributed

__all__ = ["connect", "use_scheduler", "active_scheduler", "ClusterSystem"]

logger = logging.getLogger(__name__)

#: The Dask scheduler that :meth:`image2vec.model.Image2Vec.fit` runs its passes on (None: here).
_SCHEDULER: contextvars.ContextVar[Any] = contextvars.ContextVar("image2vec_scheduler", default=None)

#: Images per task of :class:`ClusterSystem`.
CHUNK_IMAGES = 4096

#: How the per-chunk results of a per-image method are put back together, in image order.
_JOIN = {
    "summarize": Summary.concatenate,
    "decision_function": np.concatenate,
    "embed_images": np.concatenate,
    "retrieval_scores": functools.partial(np.concatenate, axis=1),  # (n_queries, N): images across
}


@contextlib.contextmanager
def connect(scheduler: str | None) -> Iterator[distributed.Client | None]:
    """A client of the Dask cluster that ``scheduler`` names, closed on exit; None for None.

    Parameters
    ----------
    scheduler : str or None
        ``"local:N"``: a new ``LocalCluster`` of N worker processes with one thread each,
        closed on exit; otherwise the address of a running scheduler. The wait for it (and for
        its first worker) is Dask's ``distributed.comm.timeouts.connect``.

    Raises
    ------
    Image2VecError
        ``distributed`` is not installed, N is not a positive integer, or the scheduler cannot
        be reached or has no worker.
    """
    if scheduler is None:
        yield None
        return
    try:
        import dask
        import distributed
    except ImportError:
        raise Image2VecError("--scheduler needs dask.distributed: pip install image2vec[dist]") from None
    logging.getLogger("distributed").setLevel(logging.WARNING)  # its start-up and shutdown chatter
    with contextlib.ExitStack() as stack:
        address: Any = scheduler
        if scheduler.startswith("local:"):
            n_workers = scheduler.removeprefix("local:")
            if not (n_workers.isascii() and n_workers.isdigit()) or int(n_workers) < 1:  # not '²'
                raise Image2VecError(f"--scheduler {scheduler}: local:N needs a number of workers N >= 1")
            address = stack.enter_context(distributed.LocalCluster(  # dashboard on a free port
                n_workers=int(n_workers), threads_per_worker=1, processes=True, dashboard_address=":0"))
            logger.info("a Dask cluster of %s worker processes, dashboard at %s", n_workers,
                        address.dashboard_link)
        timeout = dask.config.get("distributed.comm.timeouts.connect")
        try:
            client = stack.enter_context(distributed.Client(address, timeout=timeout))
        except (OSError, TimeoutError, ValueError) as exc:
            raise Image2VecError(f"cannot connect to the Dask scheduler at {scheduler}: {exc}") from None
        try:
            client.wait_for_workers(1, timeout=timeout)
        except TimeoutError:
            raise Image2VecError(f"the Dask scheduler at {scheduler} has no worker (waited "
                                 f"{timeout}): start some with dask worker {client.scheduler.address}") from None
        yield client


@contextlib.contextmanager
def use_scheduler(scheduler: distributed.Client | str | None) -> Iterator[None]:
    """Fit on a Dask scheduler inside the ``with`` block, as scikit-learn's ``parallel_config``.

    The passes of :meth:`image2vec.model.Image2Vec.fit` over the features (the means and the
    sufficient statistics) run as Dask tree reductions on ``scheduler``; the solver runs in this
    process. Infrastructure is not an estimator parameter: the fitted model is the same (to
    rounding) and is saved without it.

    Parameters
    ----------
    scheduler : distributed.Client, str or None
        A client, or a Dask scheduler name (``"threads"``, ``"processes"``, ``"sync"``); None
        runs the passes in this process.

    Examples
    --------
    >>> with distributed.Client() as client, use_scheduler(client):  # doctest: +SKIP
    ...     model = Image2Vec().fit(F, X, words=words)
    """
    token = _SCHEDULER.set(scheduler)
    try:
        yield
    finally:
        _SCHEDULER.reset(token)


def active_scheduler() -> distributed.Client | str | None:
    """The scheduler of the innermost :func:`use_scheduler` block (None outside any)."""
    return _SCHEDULER.get()


class ClusterSystem:
    """A fitted system whose per-image methods run on Dask workers, chunk by chunk.

    ``summarize``, ``decision_function``, ``embed_images`` and ``retrieval_scores`` (those the
    system has) take the images F in chunks of ``chunk_size`` rows, one task each, and return
    what the system's own method returns on all of F; the system is sent to the workers once.
    A memory-mapped F is read by the tasks from its file (see
    :func:`solvers.distributed.as_row_chunks`). Every other attribute is the system's.

    Parameters
    ----------
    system : fitted system
        Its per-image methods must treat every image on its own (all the registry's do).
    scheduler : distributed.Client
        Where the tasks run; the system is scattered to its workers when this object is made.
    chunk_size : int
        Images per task.
    """

    def __init__(self, system: Any, scheduler: distributed.Client, chunk_size: int = CHUNK_IMAGES):
        self.system, self.scheduler, self.chunk_size = system, scheduler, chunk_size
        self.remote = scheduler.scatter(system)  # a future: every call's tasks refer to it

    def __getattr__(self, name: str) -> Any:
        if name in ("system", "scheduler", "chunk_size", "remote"):  # not set yet (a copy being made)
            raise AttributeError(name)
        method = getattr(self.system, name)
        return functools.partial(self._mapped, name) if name in _JOIN else method

    def _mapped(self, name: str, F: Any, *args: Any) -> Any:
        import dask

        from solvers.distributed import as_row_chunks

        shared = [dask.delayed(arg, traverse=False) for arg in args]
        tasks = [dask.delayed(_call)(self.remote, name, block, *shared)
                 for block in as_row_chunks(F, self.chunk_size).to_delayed()[:, 0]]
        return _JOIN[name](dask.compute(*tasks, scheduler=self.scheduler))


def _call(system: Any, name: str, F: np.ndarray, *args: Any) -> Any:
    """One task: ``system.name(F, *args)`` on a chunk of images."""
    return getattr(system, name)(F, *args)
