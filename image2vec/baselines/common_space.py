"""CVS, M-CVS and RVS as word summarizers on the shared harness (DESIGN.md section 6).

:class:`CommonSpaceSummarizer` wraps the common-vector-space models of
:mod:`image2vec.baselines.cvs` in the interface of every other system (``fit(F, X, words)``,
``decision_function(F)``, ``summarize(F, k)``, saved by :mod:`image2vec.persist`):

- two modalities: ``image`` = the CNN features F (standardised with the training mean and
  standard deviation) and ``text`` = the bag of vocabulary words of each image's captions,
  ``x_nv > 0`` as 0/1;
- category labels for the classification loss and for triplet relevance: ``labels`` when given
  (e.g. the 80 COCO instance categories), else the words themselves;
- word scores: the cosine between an image embedded alone and each vocabulary word embedded as a
  one-word text (row v of the identity through the text encoder); a summary is the top k.

``variant`` picks the model: ``"cvs"`` trains both modalities together, ``"mcvs"`` trains the
image stage first and then the text stage against the frozen image side, ``"rvs"`` uses the
image as the reference modality.

The fitted network is kept as plain data (``weights_`` and ``layout_``, from
:meth:`~image2vec.baselines.cvs.CVS.export_network`), so the project's one pickle-free format
(:mod:`image2vec.persist`) stores it; :meth:`CommonSpaceSummarizer.check_loaded` rebuilds the
torch network after loading.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import scipy.sparse as sp
import torch
from sklearn.utils.validation import check_is_fitted, validate_data

from image2vec.baselines.cvs import CVS, MCVS, RVS
from image2vec.baselines.neighbors import WordScorer
from image2vec.summary import check_words

__all__ = ["CommonSpaceSummarizer", "VARIANTS"]

VARIANTS = ("cvs", "mcvs", "rvs")
IMAGE, TEXT = "image", "text"
_WORD_CHUNK = 2048


def _dense_indicator(name: str, a: Any, n_rows: int) -> np.ndarray:
    """Dense 0/1 float32 indicator matrix of the non-zero entries of ``a`` (N x C), N checked."""
    matrix = sp.csr_matrix(a)
    if matrix.shape[0] != n_rows:
        raise ValueError(f"{name} has {matrix.shape[0]} rows but the features have {n_rows}")
    if matrix.shape[1] == 0:
        raise ValueError(f"{name} has no columns")
    return (matrix != 0).toarray().astype(np.float32)


class CommonSpaceSummarizer(WordScorer):
    """Summaries by cosine to one-word texts in a CVS / M-CVS / RVS common space.

    Parameters
    ----------
    variant : {"cvs", "mcvs", "rvs"}, default="cvs"
        ``cvs``: image and text trained together with one aligned-attention block; ``mcvs``:
        stage 1 the image, stage 2 the text against the frozen image side; ``rvs``: the image is
        the reference modality, the text gets one split-attention block against it.
    attention : {"full", "no_cross", "none"}, default="full"
        Attention ablation (thesis Figure 25).
    hidden_size : int, default=512
        Width of the encoders and of the common space.
    attention_size : int, default=512
        Width of the tanh layer of each attention block.
    partner_dropout : float, default=0.5
        Probability of hiding the attention partner per row while training, so that embedding
        an image without its caption (summarization) is in-distribution.
    learning_rate : float, default=1e-3
    batch_size : int, default=128
    max_epochs : int, default=100
        Per stage.
    patience : int, default=5
        Early-stopping patience in epochs.
    validation_fraction : float, default=0.1
        Training rows held out for early stopping.
    random_state : int, default=0
    device : str, default="cpu"
        Torch device for training and inference; a model saved from ``"cuda"`` is rebuilt on
        the CPU where no GPU is available.

    Attributes
    ----------
    model_ : CVS, MCVS or RVS
        The fitted common-space model (a property: rebuilt from ``weights_`` and ``layout_``).
    weights_ : ndarray of shape (n_weights,), float32
        The network's ``state_dict``, flattened.
    layout_ : dict
        ``tensors`` (name and shape of each entry of ``weights_``, in order), ``n_classes``,
        ``input_dims``, ``blocks`` and ``stages`` of the network.
    history_ : list of dict
        Loss curves, one record per stage and epoch.
    feature_mean_, feature_scale_ : ndarray of shape (p,)
        Standardisation of the image features.
    words_ : ndarray of shape (V,)
        The vocabulary.
    n_features_in_ : int
    """

    def __init__(self, variant: str = "cvs", attention: str = "full", hidden_size: int = 512,
                 attention_size: int = 512, partner_dropout: float = 0.5,
                 learning_rate: float = 1e-3, batch_size: int = 128, max_epochs: int = 100,
                 patience: int = 5, validation_fraction: float = 0.1, random_state: int = 0,
                 device: str = "cpu"):
        self.variant = variant
        self.attention = attention
        self.hidden_size = hidden_size
        self.attention_size = attention_size
        self.partner_dropout = partner_dropout
        self.learning_rate = learning_rate
        self.batch_size = batch_size
        self.max_epochs = max_epochs
        self.patience = patience
        self.validation_fraction = validation_fraction
        self.random_state = random_state
        self.device = device

    # ------------------------------------------------------------------ training
    def fit(self, X: Any, y: Any, words: Any = None, labels: Any = None) -> CommonSpaceSummarizer:
        """Train the common space on images and their caption words.

        Parameters
        ----------
        X : array-like of shape (N, p)
            Image features F.
        y : {array-like, sparse matrix} of shape (N, V)
            Word targets; the text modality is ``y != 0`` as 0/1.
        words : sequence of str, optional
            The V vocabulary words (default ``w0, w1, ...``).
        labels : {array-like, sparse matrix} of shape (N, C), optional
            Category labels (non-zero = has the category), e.g. COCO instance categories;
            default: the words themselves.

        Returns
        -------
        self
        """
        if self.variant not in VARIANTS:
            raise ValueError(f"variant must be one of {', '.join(VARIANTS)}, got {self.variant!r}")
        F, y = validate_data(self, X, y, accept_sparse=False, multi_output=True, dtype=np.float32)
        text = _dense_indicator("y", y, F.shape[0])
        Y = text if labels is None else _dense_indicator("labels", labels, F.shape[0])
        self.words_ = check_words(words, text.shape[1])
        self.feature_mean_ = F.mean(axis=0)
        scale = F.std(axis=0)
        self.feature_scale_ = np.where(scale > 0, scale, 1.0).astype(np.float32)
        model = self._new_model(self.device)
        model.fit({IMAGE: self._standardize(F), TEXT: text}, Y)
        self.weights_, self.layout_ = model.export_network()
        self.history_ = model.history_
        self._set_model(model)
        return self

    def _new_model(self, device: str) -> CVS:
        params = dict(hidden_size=self.hidden_size, attention_size=self.attention_size,
                      attention=self.attention, partner_dropout=self.partner_dropout,
                      learning_rate=self.learning_rate, batch_size=self.batch_size,
                      max_epochs=self.max_epochs, patience=self.patience,
                      validation_fraction=self.validation_fraction,
                      random_state=self.random_state, device=device)
        if self.variant == "mcvs":
            return MCVS(stages=[[IMAGE], [TEXT]], **params)
        if self.variant == "rvs":
            return RVS(reference=IMAGE, **params)
        return CVS(**params)

    def _set_model(self, model: CVS) -> None:
        """Keep the fitted model and embed the vocabulary once, one-word texts in chunks."""
        self._model = model
        n_words = self.words_.size
        chunks = []
        for start in range(0, n_words, _WORD_CHUNK):
            stop = min(start + _WORD_CHUNK, n_words)
            one_word = np.zeros((stop - start, n_words), dtype=np.float32)
            one_word[np.arange(stop - start), np.arange(start, stop)] = 1.0
            chunks.append(model.transform(TEXT, one_word))
        self._word_embeddings = np.concatenate(chunks)

    def _standardize(self, F: np.ndarray) -> np.ndarray:
        return ((F - self.feature_mean_) / self.feature_scale_).astype(np.float32)

    # ------------------------------------------------------------------ persistence
    def check_loaded(self) -> None:
        """Rebuild the torch network from ``weights_`` and ``layout_`` (after loading).

        Raises
        ------
        ValueError
            When ``weights_`` and ``layout_`` do not describe a network of this variant.
        """
        device = self.device if self.device == "cpu" or torch.cuda.is_available() else "cpu"
        model = self._new_model(device).restore_network(self.weights_, self.layout_,
                                                        self.history_)
        self._set_model(model)

    # ------------------------------------------------------------------ inference
    @property
    def model_(self) -> CVS:
        """The fitted CVS, MCVS or RVS model (not stored: rebuilt from the arrays on load)."""
        check_is_fitted(self, "weights_")
        return self._model

    def embed_images(self, F: Any) -> np.ndarray:
        """Images embedded alone (no caption) in the common space, unit rows (N, hidden_size)."""
        check_is_fitted(self, "weights_")
        F = validate_data(self, F, reset=False, dtype=np.float32)
        return self._model.transform(IMAGE, self._standardize(F))

    def embed_texts(self, y: Any) -> np.ndarray:
        """Bags of words (N x V, non-zero = present) embedded alone, unit rows (N, hidden_size)."""
        check_is_fitted(self, "weights_")
        text = sp.csr_matrix(y)
        if text.shape[1] != self.words_.size:
            raise ValueError(f"texts have {text.shape[1]} word columns but the model has "
                             f"{self.words_.size} words")
        return self._model.transform(TEXT, _dense_indicator("y", text, text.shape[0]))

    def decision_function(self, F: Any) -> np.ndarray:
        """Cosine between each image and each vocabulary word as a one-word text, (N, V)."""
        return (self.embed_images(F) @ self._word_embeddings.T).astype(np.float64)
