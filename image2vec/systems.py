"""The trainable systems: the Image2Vec models and the baselines, one interface.

Every system has ``fit(F, X, words=...)``, ``decision_function(F)`` and ``summarize(F, k)``, is
built by :func:`make_system` from the name the command line uses (``--model NAME``), and is
saved and loaded by :func:`save` / :func:`load`. The names and classes are those of the one
registry, :mod:`image2vec.names`.
"""

from __future__ import annotations

import inspect
import os
from typing import Any

from image2vec import names
from image2vec.model import Image2Vec
from image2vec.persist import load_system, save_system

#: Baseline name -> class (the classes of :data:`image2vec.names.CLASSES`).
BASELINES: dict[str, type] = {name: names.system_class(name) for name in names.BASELINES}
#: Saved name -> class, for :func:`load`.
REGISTRY: dict[str, type] = {name: names.system_class(name) for name in names.SAVED_NAMES}
SYSTEM_NAMES = names.SYSTEM_NAMES


def make_system(name: str, options: dict[str, Any] | None = None, **params: Any) -> Any:
    """A new system by command-line name.

    ``simple``, ``learn-all`` and ``weak-tag`` are :class:`~image2vec.model.Image2Vec` models;
    the others are baselines; a baseline class registered under several names takes the name
    as its ``variant`` (``cvs``, ``mcvs``, ``rvs``).

    Parameters
    ----------
    name : str
        One of :data:`SYSTEM_NAMES`.
    options : dict, optional
        Settings the user chose for this system: each must be a parameter of it (``prior``
        has no ``objective``), or the combination is refused.
    **params
        Shared settings (``dim``, ``random_state``, ...), passed where the system takes them
        and ignored where it does not.

    Raises
    ------
    ValueError
        An unknown name, an option the system does not take, or settings its ``check_params``
        refuses (so that a bad combination fails before any data is loaded).
    """
    if name in names.MODELS:
        cls, params = Image2Vec, {**params, "model": name}
    elif name in BASELINES:
        cls, params = BASELINES[name], {**params, "variant": name}
    else:
        raise ValueError(f"unknown model {name!r}; choose from {', '.join(SYSTEM_NAMES)}")
    accepted = inspect.signature(cls).parameters
    refused = [key for key in options or {} if key not in accepted]
    if refused:
        takes = ", ".join(key for key in accepted if key not in ("model", "variant")) or "no settings"
        raise ValueError(f"{name} does not take {', '.join(refused)} (it takes {takes})")
    system = cls(**{key: value for key, value in {**params, **(options or {})}.items() if key in accepted})
    if hasattr(system, "check_params"):
        system.check_params()
    return system


def system_name(system: Any) -> str:
    """The command-line name of a system instance."""
    if isinstance(system, Image2Vec):
        return system.model
    return next(name for name, cls in BASELINES.items()
                if isinstance(system, cls) and getattr(system, "variant", name) == name)


def save(system: Any, path: str | os.PathLike, metadata: dict | None = None,
         float_storage: str | None = None) -> None:
    """Save a fitted system (no pickle), atomically; ``float_storage="float16"`` halves its size
    (see :func:`image2vec.persist.save_system`)."""
    registered = "image2vec" if isinstance(system, Image2Vec) else system_name(system)
    save_system(system, registered, path, metadata, float_storage)


def load(path: str | os.PathLike) -> tuple[Any, dict]:
    """Load a saved system; returns (system, metadata)."""
    system, metadata, _ = load_system(path, REGISTRY)
    return system, metadata
