"""The names of the trainable systems, importable without the systems themselves.

The command line offers these names and loads saved models through :class:`SavedSystems`
without importing :mod:`image2vec.systems` (which imports torch for the CVS baselines), so that
``image2vec --help`` answers in a fraction of a second and an Image2Vec model loads without
torch. :mod:`image2vec.systems` holds the classes; a test checks that the two agree.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

#: The Image2Vec models (``--model NAME``), one estimator class with ``model=NAME``.
MODELS = ("reduced-rank", "learn-all", "weak-tag", "simple")
#: The baselines, each its own class.
BASELINES = ("prior", "knn", "cvs", "mcvs", "rvs", "imnet-glove", "cca", "ridge")
#: Every name ``train --model`` accepts.
SYSTEM_NAMES = (*MODELS, *BASELINES)
#: The names model files record: every Image2Vec model as ``image2vec``, a baseline by its name.
SAVED_NAMES = ("image2vec", *BASELINES)


class SavedSystems(Mapping):
    """Saved name -> class, importing only the class asked for.

    The mapping that :func:`image2vec.persist.load_system` reads: an Image2Vec model needs
    :mod:`image2vec.model` alone; a baseline imports :mod:`image2vec.systems`.
    """

    def __getitem__(self, name: str) -> type:
        if name == "image2vec":
            from image2vec.model import Image2Vec

            return Image2Vec
        if name not in BASELINES:
            raise KeyError(name)
        from image2vec.systems import BASELINES as classes

        return classes[name]

    def __iter__(self) -> Iterator[str]:
        return iter(SAVED_NAMES)

    def __len__(self) -> int:
        return len(SAVED_NAMES)
