r"""Common vector space baselines: CVS, M-CVS and RVS (Gopalakrishnan 2019; DESIGN.md section 6).

Every modality m (image features, bag-of-words texts, tags, ...) has an encoder of two fully
connected layers, :math:`g^m = W^m_2\,\mathrm{ReLU}(W^m_1 f^m + b^m_1) + b^m_2 \in \mathbb{R}^h`
(h = 512), then aligned attention, then L2 normalisation into the common h-dimensional space.

Aligned attention between modalities i and s (one block, no biases)::

    e     = W_e tanh(g_i W_i + g_s W_s + (g_i * g_s) W_is)        e in R^h
    alpha = softmax(e)                                              over the h dimensions
    g_i  <- g_i + alpha * g_i,   g_s <- g_s + alpha * g_s           residual, one shared alpha

Conventions of this implementation (the paper leaves them open):

- **Several pairs.** A modality that takes part in several blocks is gated by the *mean* of their
  attention vectors, :math:`e^m = \mathrm{normalise}(g^m \odot (1 + \frac{1}{|B_m|}
  \sum_{b \in B_m} \alpha_b))`; for two modalities this is exactly the formula above.
- **Missing partner.** A partner that is not given (single-modality inference: an image to
  summarize has no caption) is encoded as the zero vector, so its terms vanish and
  :math:`e = W_e \tanh(g_i W_i)`. Training hides each partner per row and block with
  probability ``partner_dropout`` (0.5) so that this case is in-distribution;
  ``partner_dropout=0`` is the paper's training. :meth:`transform` uses every partner passed in
  ``context`` (paired, "aligned" inference) and zeros for the others.
- **Ablation** (thesis Figure 25): ``attention="full"`` (the formula), ``"no_cross"`` (without
  the :math:`(g_i \odot g_s) W_{is}` term), ``"none"`` (:math:`e^m = \mathrm{normalise}(g^m)`).

Models:

- :class:`CVS`: one block per pair of modalities, everything trained together.
- :class:`MCVS`: modalities added stage by stage; a new modality n gets one block with every
  earlier modality o, used by n only, and pairwise blocks with the other modalities new in the
  same stage; every earlier weight (encoders, blocks, classifier head) is frozen, so earlier
  embeddings stay bit-identical. CVS is M-CVS with a single stage.
- :class:`RVS`: a reference modality r is trained first on its own, with a self-attention
  :math:`\alpha_r = \mathrm{softmax}(W_e^{r} \tanh(g_r W^{r}_r))`. Each further modality m then
  gets one block against r whose attention matrix is split as
  :math:`W_e = [W_e^{r} \mid W_e^{m}]` acting on
  :math:`[\tanh(g_r W^{r}_r);\ \tanh(g_m W_m + g_r W_r + (g_m \odot g_r) W_{mr})]`, i.e.
  :math:`\alpha_m = \mathrm{softmax}(W_e^{r}\tanh(g_r W^{r}_r) + W_e^{m}\tanh(\cdot))`: the
  reference part is shared and frozen, only the per-modality part (and m's encoder) is trained.
  The reference space, the classifier head and the reference embeddings never change.

Loss, optimiser, early stopping: :mod:`image2vec.baselines.cvs_train`. A fitted network leaves
and re-enters the model as plain data (:meth:`CVS.export_network`, :meth:`CVS.restore_network`:
one flat float32 vector and a JSON-able layout), which :mod:`image2vec.persist` stores through
:class:`image2vec.baselines.common_space.CommonSpaceSummarizer`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from image2vec.baselines.cvs_train import StageLoss, TrainingSchedule, train_stage
from image2vec.errors import Image2VecError
from image2vec.metrics import check_matrix

__all__ = ["AlignedAttention", "ReferenceAttention", "CVS", "MCVS", "RVS"]

ATTENTION_MODES = ("full", "no_cross", "none")
_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,63}$")
_CHUNK = 4096


class AlignedAttention(nn.Module):
    r"""Attention logits of one pair of modalities.

    :math:`e = W_e \tanh(g_i W_i + g_s W_s + (g_i \odot g_s) W_{is})`, no biases.

    Parameters
    ----------
    dim : int
        h, the size of g_i, g_s and e.
    attention_size : int
        Width of the tanh layer.
    cross : bool
        Whether the :math:`W_{is}` term is present.
    """

    def __init__(self, dim: int, attention_size: int, cross: bool):
        super().__init__()
        self.w_i = nn.Linear(dim, attention_size, bias=False)
        self.w_s = nn.Linear(dim, attention_size, bias=False)
        self.w_is = nn.Linear(dim, attention_size, bias=False) if cross else None
        self.w_e = nn.Linear(attention_size, dim, bias=False)

    def forward(self, g_i: torch.Tensor, g_s: torch.Tensor) -> torch.Tensor:
        """Logits e of shape (B, dim) for rows g_i, g_s of shape (B, dim)."""
        pre = self.w_i(g_i) + self.w_s(g_s)
        if self.w_is is not None:
            pre = pre + self.w_is(g_i * g_s)
        return self.w_e(torch.tanh(pre))


class ReferenceAttention(nn.Module):
    r"""The reference part of RVS's split attention, :math:`W_e^{r} \tanh(g_r W^{r}_r)`."""

    def __init__(self, dim: int, attention_size: int):
        super().__init__()
        self.w_r = nn.Linear(dim, attention_size, bias=False)
        self.w_e = nn.Linear(attention_size, dim, bias=False)

    def forward(self, g_r: torch.Tensor) -> torch.Tensor:
        """Logits of shape (B, dim)."""
        return self.w_e(torch.tanh(self.w_r(g_r)))


def _dimension(value: Any) -> int:
    """A layer width read from a layout: a positive integer, else ValueError."""
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"a layer width is {value!r}, not a positive integer")
    return value


def _encoder(in_dim: int, hidden: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(), nn.Linear(hidden, hidden))


class _CommonSpaceNetwork(nn.Module):
    """Encoders, attention blocks and the classifier head, with the routing of blocks to users.

    ``routes[m]`` lists the blocks whose attention gates modality m's embedding, as
    ``(block key, partner modality)``; ``pairs[key] = (i, s)`` fixes which input plays g_i.
    """

    def __init__(self, hidden: int, attention_size: int, attention: str, n_classes: int,
                 reference: str | None):
        super().__init__()
        self.hidden, self.attention_size, self.attention = hidden, attention_size, attention
        self.reference = reference
        self.encoders = nn.ModuleDict()
        self.blocks = nn.ModuleDict()
        self.head = nn.Linear(hidden, n_classes)
        self.reference_attention = (ReferenceAttention(hidden, attention_size)
                                    if reference is not None and attention != "none" else None)
        self.routes: dict[str, list[tuple[str, str]]] = {}
        self.pairs: dict[str, tuple[str, str]] = {}

    @property
    def modalities(self) -> list[str]:
        return list(self.encoders.keys())

    def add_encoder(self, name: str, in_dim: int) -> nn.Module:
        self.encoders[name] = _encoder(in_dim, self.hidden)
        self.routes[name] = []
        return self.encoders[name]

    def add_block(self, i: str, s: str, users: Sequence[str]) -> nn.Module:
        """Create block (i, s) whose attention gates the embeddings of ``users``."""
        key = f"{i}:{s}"
        self.blocks[key] = AlignedAttention(self.hidden, self.attention_size,
                                            cross=self.attention == "full")
        self.pairs[key] = (i, s)
        for u in users:
            self.routes[u].append((key, s if u == i else i))
        return self.blocks[key]

    def structure(self) -> list[list]:
        """The blocks as JSON-able ``[i, s, users]`` in creation order."""
        users = {key: [m for m in self.modalities if any(k == key for k, _ in self.routes[m])]
                 for key in self.blocks}
        return [[*self.pairs[key], users[key]] for key in self.blocks]

    def embed(self, inputs: Mapping[str, torch.Tensor], *, trainable: Sequence[str] = (),
              partner_dropout: float = 0.0,
              generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """Unit-norm embeddings of every modality in ``inputs`` (rows aligned).

        Partners absent from ``inputs`` are zero vectors; for the modalities in ``trainable``
        each partner row is also zeroed with probability ``partner_dropout`` (masks drawn from
        ``generator`` in a fixed order).
        """
        order = [m for m in self.modalities if m in inputs]
        g = {m: self.encoders[m](inputs[m]) for m in order}
        out = {}
        for u in order:
            gu = g[u]
            alphas = []
            if self.reference_attention is not None and u == self.reference:
                alphas.append(torch.softmax(self.reference_attention(gu), dim=1))
            for key, partner in self.routes[u]:
                gp = g.get(partner)
                gp = torch.zeros_like(gu) if gp is None else gp
                if u in trainable and partner_dropout > 0:
                    keep = torch.rand(gu.shape[0], 1, generator=generator) >= partner_dropout
                    gp = gp * keep.to(device=gp.device, dtype=gp.dtype)
                i, _ = self.pairs[key]
                logits = self.blocks[key](gu, gp) if u == i else self.blocks[key](gp, gu)
                if self.reference_attention is not None:
                    logits = logits + self.reference_attention(gp)
                alphas.append(torch.softmax(logits, dim=1))
            if alphas:
                gu = gu * (1.0 + torch.stack(alphas).mean(dim=0))
            out[u] = nn.functional.normalize(gu, dim=1)
        return out


def _features(name: str, x, n_rows: int | None = None, n_cols: int | None = None) -> np.ndarray:
    """``x`` as a finite non-empty float32 matrix (``n_rows`` rows, ``n_cols`` columns if given)."""
    a = check_matrix(f"features of modality {name!r}", x)
    if a.shape[0] == 0 or a.shape[1] == 0:
        raise Image2VecError(f"features of modality {name!r} must be a non-empty 2-D matrix, "
                             f"got shape {a.shape}")
    if n_rows is not None and a.shape[0] != n_rows:
        raise Image2VecError(f"features of modality {name!r} have {a.shape[0]} rows but "
                             f"{n_rows} were expected (rows must be aligned across modalities)")
    if n_cols is not None and a.shape[1] != n_cols:
        raise Image2VecError(f"features of modality {name!r} have {a.shape[1]} columns but the "
                             f"model was trained with {n_cols}")
    return a.astype(np.float32, copy=False)


class _CommonSpaceModel:
    """Shared estimator logic: input checks, stage-wise training, transform, export/restore.

    Subclasses say which modalities each stage trains (``_plan``), which attention weights a
    stage adds (``_add_blocks``) and which modalities a stage sees (``_stage_inputs``).
    """

    def __init__(self, *, hidden_size: int = 512, attention_size: int = 512,
                 attention: str = "full", classification_weight: float = 1.0,
                 triplet_weight: float = 1.0, margin: float = 1.0,
                 partner_dropout: float = 0.5, learning_rate: float = 1e-3,
                 batch_size: int = 128, max_epochs: int = 100, patience: int = 5,
                 validation_fraction: float = 0.1, random_state: int = 0,
                 device: str = "cpu", verbose: bool = False):
        self.hidden_size = hidden_size
        self.attention_size = attention_size
        self.attention = attention
        self.classification_weight = classification_weight
        self.triplet_weight = triplet_weight
        self.margin = margin
        self.partner_dropout = partner_dropout
        self.learning_rate = learning_rate
        self.batch_size = batch_size
        self.max_epochs = max_epochs
        self.patience = patience
        self.validation_fraction = validation_fraction
        self.random_state = random_state
        self.device = device
        self.verbose = verbose

    # ------------------------------------------------------------------ checks
    def _check_params(self) -> None:
        if self.attention not in ATTENTION_MODES:
            raise Image2VecError(f"attention must be one of {ATTENTION_MODES}, "
                                 f"got {self.attention!r}")
        for name in ("hidden_size", "attention_size", "batch_size", "max_epochs", "patience"):
            value = getattr(self, name)
            if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
                raise Image2VecError(f"{name} must be a positive integer, got {value!r}")
        if not 0.0 <= self.partner_dropout < 1.0:
            raise Image2VecError(f"partner_dropout must be in [0, 1), got {self.partner_dropout}")
        if not 0.0 <= self.validation_fraction < 1.0:
            raise Image2VecError("validation_fraction must be in [0, 1), "
                                 f"got {self.validation_fraction}")
        if self.learning_rate <= 0 or self.margin < 0:
            raise Image2VecError("learning_rate must be positive and margin non-negative")
        if self.classification_weight < 0 or self.triplet_weight < 0 or (
                self.classification_weight == 0 and self.triplet_weight == 0):
            raise Image2VecError("classification_weight and triplet_weight must be non-negative "
                                 "and not both zero")

    @staticmethod
    def _check_name(name) -> str:
        if not isinstance(name, str) or not _NAME.match(name):
            raise Image2VecError(f"modality name {name!r} must start with a letter and contain "
                                 "only letters, digits, '_' or '-' (at most 64 characters)")
        return name

    def _check_fitted(self) -> None:
        if getattr(self, "network_", None) is None:
            raise Image2VecError(f"this {type(self).__name__} is not fitted: call fit() or "
                                 "restore_network()")

    def _check_modality(self, name) -> str:
        if name not in self.network_.encoders:
            raise Image2VecError(f"unknown modality {name!r}; the model knows "
                                 f"{', '.join(self.network_.modalities)}")
        return name

    def _check_training_data(self, features: Mapping, Y) -> tuple[dict[str, np.ndarray],
                                                                   np.ndarray]:
        if not isinstance(features, Mapping) or not features:
            raise Image2VecError("features must be a non-empty dict: modality name -> matrix")
        names = [self._check_name(n) for n in features]
        first = _features(names[0], features[names[0]])
        out = {names[0]: first}
        for name in names[1:]:
            out[name] = _features(name, features[name], n_rows=first.shape[0])
        try:
            y = np.asarray(Y, dtype=np.float32)
        except (TypeError, ValueError) as exc:
            raise Image2VecError(f"labels Y are not numeric: {exc}") from None
        if y.ndim != 2 or y.shape[1] == 0:
            raise Image2VecError(f"labels Y must be a 2-D 0/1 matrix (N x C), got shape {y.shape}")
        if y.shape[0] != first.shape[0]:
            raise Image2VecError(f"labels Y have {y.shape[0]} rows but the features have "
                                 f"{first.shape[0]}")
        if not np.all((y == 0) | (y == 1)):
            raise Image2VecError("labels Y must contain only 0 and 1")
        if y.shape[0] < 2:
            raise Image2VecError("at least two training rows are needed")
        if getattr(self, "network_", None) is not None and y.shape[1] != self.n_classes_:
            raise Image2VecError(f"labels Y have {y.shape[1]} classes but the model was trained "
                                 f"with {self.n_classes_}")
        return out, y

    # ------------------------------------------------------------------ training
    def fit(self, features: Mapping[str, np.ndarray], Y: np.ndarray) -> _CommonSpaceModel:
        """Train on rows-aligned ``features`` (name -> (N, p_m)) and labels Y (N, C).

        Parameters
        ----------
        features : dict of str to ndarray of shape (N, p_m)
            One feature matrix per modality, rows aligned (row n = item n in every modality).
        Y : ndarray of shape (N, C)
            0/1 category labels (multi-label allowed).

        Returns
        -------
        self
        """
        self.network_ = None
        feats, y = self._check_training_data(features, Y)
        plan = self._plan(list(feats))
        self._start(y)
        for new in plan:
            self._grow(list(new), feats, y)
        return self

    def add_modality(self, name: str, features: Mapping[str, np.ndarray],
                     Y: np.ndarray) -> _CommonSpaceModel:
        """One more stage: train modality ``name`` against the frozen earlier weights.

        Parameters
        ----------
        name : str
            The new modality.
        features : dict of str to ndarray
            Rows-aligned features of ``name`` and of every modality the stage sees (M-CVS: all
            modalities of the model; RVS: the reference).
        Y : ndarray of shape (N, C)
            0/1 labels, the same C classes as in :meth:`fit`.

        Returns
        -------
        self
        """
        self._check_fitted()
        feats, y = self._check_training_data(features, Y)
        self._check_name(name)
        if name in self.network_.encoders:
            raise Image2VecError(f"modality {name!r} is already in the model")
        needed = self._stage_inputs(self.network_.modalities, [name])
        missing = [m for m in needed if m not in feats]
        if missing:
            raise Image2VecError(f"features lack modality {', '.join(map(repr, missing))} "
                                 "needed for this stage")
        self._grow([name], feats, y)
        return self

    def _torch(self, a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(a).to(self.device)

    def _stage(self, features: dict[str, np.ndarray], y: np.ndarray,
               stage_modalities: Sequence[str], trainable: Sequence[str],
               parameters: Sequence[nn.Parameter]) -> None:
        stage = len(self.stages_)
        history = train_stage(
            self.network_, {m: self._torch(features[m]) for m in stage_modalities},
            self._torch(y), stage_modalities=list(stage_modalities), trainable=list(trainable),
            parameters=parameters,
            loss=StageLoss(self.classification_weight, self.triplet_weight, self.margin),
            schedule=TrainingSchedule(self.learning_rate, self.batch_size, self.max_epochs,
                                      self.patience, self.validation_fraction,
                                      self.partner_dropout),
            seed=int(self.random_state) + 7919 * stage, stage=stage, verbose=self.verbose)
        blocks = [k for k, block in self.network_.blocks.items()
                  if any(p is q for p in block.parameters() for q in parameters)]
        self.stages_.append({"modalities": list(trainable), "blocks": blocks,
                             "n_parameters": sum(p.numel() for p in parameters)})
        self.history_.extend(history)

    def _new_network(self, n_classes: int) -> _CommonSpaceNetwork:
        return _CommonSpaceNetwork(self.hidden_size, self.attention_size, self.attention,
                                   n_classes, getattr(self, "reference", None))

    def _start(self, y: np.ndarray) -> None:
        self._check_params()
        self.n_classes_ = y.shape[1]
        self.input_dims_: dict[str, int] = {}
        self.stages_: list[dict] = []
        self.history_: list[dict] = []
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(self.random_state))
            self.network_ = self._new_network(self.n_classes_).to(self.device)

    def _grow(self, new: list[str], features: dict[str, np.ndarray], y: np.ndarray) -> None:
        """Add the modalities ``new`` (one stage) and train them, freezing everything earlier.

        The stage trains the new encoders and the weights ``_add_blocks`` creates; the first
        stage also trains the classifier head.
        """
        old = self.network_.modalities
        params: list[nn.Parameter] = [] if old else list(self.network_.head.parameters())
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(self.random_state) + 104729 * (len(self.stages_) + 1))
            for n in new:
                params += self.network_.add_encoder(n, features[n].shape[1]).parameters()
                self.input_dims_[n] = int(features[n].shape[1])
            params += self._add_blocks(old, new)
            self.network_.to(self.device)
        self._stage(features, y, self._stage_inputs(old, new), new, params)

    def _layout_network(self, layout: Mapping) -> _CommonSpaceNetwork:
        """A network of the structure ``layout`` describes (its weights not set)."""
        network = self._new_network(_dimension(layout["n_classes"]))
        for name, dim in layout["input_dims"].items():
            network.add_encoder(self._check_name(name), _dimension(dim))
        for i, s, users in layout["blocks"]:
            network.add_block(i, s, users)
        return network

    # ------------------------------------------------------------------ plain-data form
    def export_network(self) -> tuple[np.ndarray, dict]:
        """The fitted network as plain data, for a pickle-free file.

        Returns
        -------
        weights : ndarray of shape (n_weights,), float32
            The network's ``state_dict``, each tensor flattened, in order.
        layout : dict
            JSON-able: ``tensors`` (name and shape of each piece of ``weights``), ``n_classes``,
            ``input_dims``, ``blocks`` (:meth:`_CommonSpaceNetwork.structure`) and ``stages``.
        """
        self._check_fitted()
        state = self.network_.state_dict()
        weights = np.concatenate([t.detach().cpu().numpy().ravel() for t in state.values()])
        layout = {"tensors": [[key, list(t.shape)] for key, t in state.items()],
                  "n_classes": self.n_classes_, "input_dims": dict(self.input_dims_),
                  "blocks": self.network_.structure(), "stages": list(self.stages_)}
        return weights.astype(np.float32, copy=False), layout

    def restore_network(self, weights: np.ndarray, layout: Mapping,
                        history: Sequence[dict] = ()) -> _CommonSpaceModel:
        """Rebuild the network written by :meth:`export_network` (bit-identical weights).

        The model must have been constructed with the same ``hidden_size``,
        ``attention_size``, ``attention`` (and, for RVS, ``reference``) as the exported one.

        Parameters
        ----------
        weights : ndarray of shape (n_weights,)
        layout : dict
            As returned by :meth:`export_network` (possibly through JSON).
        history : sequence of dict, optional
            The loss curves to keep as ``history_``.

        Returns
        -------
        self

        Raises
        ------
        Image2VecError
            When ``weights`` and ``layout`` do not describe a network of this model.
        """
        self._check_params()
        try:  # first on the meta device, which allocates nothing: the layout may claim terabytes
            with torch.device("meta"):
                shapes = {key: tuple(t.shape) for key, t in self._layout_network(layout).state_dict().items()}
        except (RuntimeError, ValueError, TypeError, KeyError, AttributeError) as exc:
            raise Image2VecError(f"the layout does not describe a {type(self).__name__} network: "
                                 f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None
        sizes = [math.prod(shape) for shape in shapes.values()]
        weights = np.asarray(weights)
        if weights.ndim != 1 or weights.size != sum(sizes):
            raise Image2VecError(f"the weights have {weights.size} values but the layout needs "
                                 f"{sum(sizes)}: they do not match a {type(self).__name__} network")
        if [[key, list(shape)] for key, shape in shapes.items()] != list(map(list, layout["tensors"])):
            raise Image2VecError("the layout's list of tensors does not match its network")
        network = self._layout_network(layout)
        pieces = np.split(weights.astype(np.float32, copy=False), np.cumsum(sizes)[:-1])
        state = {key: torch.from_numpy(piece.reshape(shape).copy())
                 for (key, shape), piece in zip(shapes.items(), pieces)}
        try:
            network.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            raise Image2VecError(f"the weights do not match a {type(self).__name__} network: "
                                 f"{str(exc).splitlines()[0]}") from None
        self.n_classes_ = int(layout["n_classes"])
        self.input_dims_ = {m: int(d) for m, d in layout["input_dims"].items()}
        self.stages_ = list(layout["stages"])
        self.history_ = list(history)
        self.network_ = network.to(self.device).eval()
        return self

    # ------------------------------------------------------------------ inference
    def transform(self, modality: str, X: np.ndarray,
                  context: Mapping[str, np.ndarray] | None = None) -> np.ndarray:
        """Embed items of one modality into the common space.

        Parameters
        ----------
        modality : str
            A modality the model was trained on.
        X : ndarray of shape (N, p_modality)
        context : dict, optional
            Aligned features of partner modalities (row i = the same item). Attention blocks
            use these partners; partners not given are zero vectors (single-modality
            inference).

        Returns
        -------
        ndarray of shape (N, hidden_size), float32
            Unit-norm embeddings :math:`e^m`.
        """
        self._check_fitted()
        self._check_modality(modality)
        x = _features(modality, X, n_cols=self.input_dims_[modality])
        inputs = {modality: x}
        for name, value in (context or {}).items():
            self._check_modality(name)
            if name == modality:
                raise Image2VecError(f"context must not contain the embedded modality "
                                     f"{modality!r} itself")
            inputs[name] = _features(name, value, n_rows=x.shape[0],
                                     n_cols=self.input_dims_[name])
        out = []
        with torch.no_grad():
            for start in range(0, x.shape[0], _CHUNK):
                chunk = {m: self._torch(a[start:start + _CHUNK]) for m, a in inputs.items()}
                out.append(self.network_.embed(chunk)[modality].cpu().numpy())
        return np.concatenate(out).astype(np.float32, copy=False)


class CVS(_CommonSpaceModel):
    """Common vector space: one aligned-attention block per pair of modalities, trained jointly.

    Parameters
    ----------
    hidden_size : int, default=512
        Width of both encoder layers and of the common space.
    attention_size : int, default=512
        Width of the tanh layer of each attention block.
    attention : {"full", "no_cross", "none"}, default="full"
        Attention ablation (thesis Figure 25).
    classification_weight, triplet_weight : float, default=1.0
        a and b of the loss.
    margin : float, default=1.0
        Triplet margin.
    partner_dropout : float, default=0.5
        Probability of hiding an attention partner per row while training (0: paper).
    learning_rate : float, default=1e-3
    batch_size : int, default=128
    max_epochs : int, default=100
    patience : int, default=5
        Early-stopping patience in epochs.
    validation_fraction : float, default=0.1
        Rows held out for early stopping (0 disables it).
    random_state : int, default=0
        Seeds initialisation, shuffling, the validation split and dropout masks.
    device : str, default="cpu"
        Torch device; CPU training is deterministic.
    verbose : bool, default=False
        tqdm progress over epochs.

    Attributes
    ----------
    network_ : torch.nn.Module
    input_dims_ : dict of str to int
    n_classes_ : int
    stages_ : list of dict
        One record per stage so far: ``modalities`` and attention ``blocks`` (``"i:s"`` keys)
        trained in it, and ``n_parameters``, the number of weights it trained.
    history_ : list of dict
        Loss curves: one record per stage and epoch (train/val losses).
    """

    def _plan(self, names: list[str]) -> list[list[str]]:
        """The modalities trained in each stage: all at once."""
        return [names]

    def _stage_inputs(self, old: list[str], new: list[str]) -> list[str]:
        """A stage sees every modality so far."""
        return old + new

    def _add_blocks(self, old: list[str], new: list[str]) -> list[nn.Parameter]:
        """M-CVS rule: block (o, n) for every earlier o, used by n only; block (n1, n2) for
        pairs of new modalities, used by both."""
        params: list[nn.Parameter] = []
        if self.attention == "none":
            return params
        for o in old:
            for n in new:
                params += self.network_.add_block(o, n, users=[n]).parameters()
        for a, n1 in enumerate(new):
            for n2 in new[a + 1:]:
                params += self.network_.add_block(n1, n2, users=[n1, n2]).parameters()
        return params


class MCVS(CVS):
    """Multi-stage common vector space (M-CVS): modalities added stage by stage, earlier frozen.

    Parameters
    ----------
    stages : sequence of sequence of str, optional
        Modalities trained in each stage, e.g. ``[["image", "text"], ["tags"]]``. Default: the
        first two modalities of ``features`` together, then one stage per further modality.
    **kwargs
        As :class:`CVS`.
    """

    def __init__(self, stages: Sequence[Sequence[str]] | None = None, **kwargs):
        super().__init__(**kwargs)
        self.stages = None if stages is None else [list(s) for s in stages]

    def _plan(self, names: list[str]) -> list[list[str]]:
        if self.stages is None:
            return [names[:2]] + [[n] for n in names[2:]]
        flat = [m for stage in self.stages for m in stage]
        if sorted(flat) != sorted(names) or len(set(flat)) != len(flat) or not all(self.stages):
            raise Image2VecError(f"stages {self.stages} must list every modality of the "
                                 f"features ({', '.join(names)}) exactly once")
        return self.stages


class RVS(_CommonSpaceModel):
    """Reference vector space: a fixed reference modality, one split-attention block per other.

    Parameters
    ----------
    reference : str
        The reference modality (e.g. ``"image"``).
    **kwargs
        As :class:`CVS`.

    Notes
    -----
    Stage 0 trains the reference encoder, its attention part :math:`(W^r_r, W^r_e)` and the
    classifier head on the reference alone (classification + intra-modal triplet). Each later
    stage trains one modality m: its encoder and its block :math:`(W_m, W_r, W_{mr}, W_e^m)`;
    the loss is classification of m (frozen head) + 0.25 intra-m + 0.5 inter (m, reference)
    triplets.
    """

    def __init__(self, reference: str = "image", **kwargs):
        super().__init__(**kwargs)
        self.reference = reference

    def _plan(self, names: list[str]) -> list[list[str]]:
        """The reference first, then every other modality in turn (dict order)."""
        if self.reference not in names:
            raise Image2VecError(f"reference modality {self.reference!r} is not among the "
                                 f"features ({', '.join(names)})")
        return [[self.reference]] + [[n] for n in names if n != self.reference]

    def _stage_inputs(self, old: list[str], new: list[str]) -> list[str]:
        """A stage sees the reference and its new modality."""
        return [self.reference] + [n for n in new if n != self.reference]

    def _add_blocks(self, old: list[str], new: list[str]) -> list[nn.Parameter]:
        """Stage 0: the reference part of the attention; later: one block (m, reference)."""
        if self.attention == "none":
            return []
        if not old:
            return list(self.network_.reference_attention.parameters())
        params: list[nn.Parameter] = []
        for n in new:
            params += self.network_.add_block(n, self.reference, users=[n]).parameters()
        return params
