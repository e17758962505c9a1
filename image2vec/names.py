"""The one registry of trainable systems: their names, where their classes live, their defaults.

Everything that lists the systems reads it: the command line (its choices and help texts, without
importing any system, so that ``image2vec --help`` answers in a fraction of a second), the model
loader (:class:`SavedSystems`, which imports only the class a file names: an Image2Vec model
loads without the baselines' torch), :mod:`image2vec.systems` (the classes themselves) and
:class:`image2vec.model.Image2Vec` (its defaults). This module imports no other part of image2vec.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator, Mapping

#: The Image2Vec models (``--model NAME``), one estimator class with ``model=NAME``.
MODELS = ("reduced-rank", "learn-all", "weak-tag", "simple")
OBJECTIVES = ("l2", "ip")
SOLVERS = ("bcd", "sgd")
#: Saved name -> (module, class). Every Image2Vec model is saved as ``image2vec``; a baseline
#: under its ``--model`` name (``cvs``, ``mcvs`` and ``rvs`` share a class, as its ``variant``).
CLASSES = {
    "image2vec": ("image2vec.model", "Image2Vec"),
    "prior": ("image2vec.baselines.neighbors", "FrequencyPrior"),
    "knn": ("image2vec.baselines.neighbors", "NearestNeighborTransfer"),
    "cvs": ("image2vec.baselines.common_space", "CommonSpaceSummarizer"),
    "mcvs": ("image2vec.baselines.common_space", "CommonSpaceSummarizer"),
    "rvs": ("image2vec.baselines.common_space", "CommonSpaceSummarizer"),
    "imnet-glove": ("image2vec.baselines.imnet_glove", "ImnetGlove"),
    "cca": ("image2vec.baselines.linear", "MeanVectorCCA"),
    "ridge": ("image2vec.baselines.linear", "ReducedRankRidge"),
}
#: The baselines, each its own class.
BASELINES = tuple(name for name in CLASSES if name != "image2vec")
#: Every name ``train --model`` accepts.
SYSTEM_NAMES = (*MODELS, *BASELINES)
#: The names model files record.
SAVED_NAMES = tuple(CLASSES)

#: The default Image2Vec model and the defaults of its settings (its constructor's defaults).
DEFAULT_MODEL = MODELS[0]
DEFAULT_OBJECTIVE = "l2"
DEFAULT_SOLVER = "bcd"
DEFAULT_DIM = 256
#: Defaults of ``lam`` (the l2 ridge) and ``prior_weight`` (the OMP read-out's word-frequency
#: prior) per model, chosen on the Flickr8k dev split (experiments/flickr8k.py).
DEFAULT_LAM = {"reduced-rank": 3e-4, "learn-all": 10.0, "weak-tag": 0.1, "simple": 0.1}
DEFAULT_PRIOR_WEIGHT = {"reduced-rank": 0.0, "learn-all": 0.03, "weak-tag": 0.3, "simple": 0.1}


def system_class(name: str) -> type:
    """The class of the saved system ``name`` (imported on first use).

    Raises
    ------
    KeyError
        ``name`` is not in :data:`CLASSES`.
    """
    module, attribute = CLASSES[name]
    return getattr(importlib.import_module(module), attribute)


class SavedSystems(Mapping):
    """Saved name -> class, importing only the class asked for.

    The mapping that :func:`image2vec.persist.load_system` reads.
    """

    def __getitem__(self, name: str) -> type:
        return system_class(name)

    def __iter__(self) -> Iterator[str]:
        return iter(SAVED_NAMES)

    def __len__(self) -> int:
        return len(SAVED_NAMES)
