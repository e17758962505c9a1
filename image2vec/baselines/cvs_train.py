r"""Losses and the stage-wise training loop of the common-vector-space baselines (CVS, M-CVS, RVS).

The network itself (encoders, aligned attention, classifier head) lives in
:mod:`image2vec.baselines.cvs`; this module only needs its ``embed`` and ``head``.

Loss of one stage, with :math:`e^m_n` the L2-normalised embedding of item n in modality m,
:math:`T` the modalities trained in the stage and :math:`S \supseteq T` all modalities the stage
sees (frozen ones included)::

    L = a * mean_{m in T} BCE(head(e^m), y)                               classification
      + b * [ sum_{m in T} (0.5 / |S|) * trip(m -> m)                     intra-modal
            + sum_{pairs {m, s} of S touching T} (0.5 / C(|S|, 2))
                  * (trip(m -> s) + trip(s -> m)) / 2 ]                   inter-modal

For two modalities this is the paper's 0.25 / 0.25 / 0.5 weighting. ``trip(m -> s)`` is the
batch-wise semi-hard triplet loss (margin 1.0) with anchors in modality m and positives and
negatives in modality s; relevance is sharing at least one label.

The loss curves are returned as records and logged (logger ``image2vec.baselines.cvs_train``):
one DEBUG line per epoch, one INFO line per stage (epochs run, best validation loss, whether
early stopping ended it).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

__all__ = ["semi_hard_triplet_loss", "StageLoss", "TrainingSchedule", "train_stage"]

logger = logging.getLogger(__name__)


def semi_hard_triplet_loss(anchor: torch.Tensor, gallery: torch.Tensor, relevant: torch.Tensor,
                           *, margin: float = 1.0, same_items: bool = False) -> torch.Tensor:
    r"""Batch-wise triplet loss with semi-hard negative mining (FaceNet; TF-Addons convention).

    With :math:`d_{ij} = \lVert a_i - g_j \rVert_2` (Euclidean distance of unit vectors), every
    relevant pair (i, j) is an anchor-positive pair. Its negative is the *semi-hard* one,
    :math:`\min \{ d_{ik} : k \text{ not relevant to } i,\ d_{ik} > d_{ij} \}`; when no negative
    is farther than the positive, the farthest negative :math:`\max_k d_{ik}` is used. The loss
    is the mean over all anchor-positive pairs that have a negative of
    :math:`\max(0,\ d_{ij} - d_{ik} + \text{margin})`.

    Parameters
    ----------
    anchor : Tensor of shape (B, d)
        Anchor embeddings (unit rows).
    gallery : Tensor of shape (B, d)
        Embeddings that positives and negatives are drawn from (unit rows).
    relevant : BoolTensor of shape (B, B)
        ``relevant[i, j]``: gallery item j is relevant to anchor i.
    margin : float, default=1.0
    same_items : bool, default=False
        True when ``gallery`` is ``anchor`` (intra-modal): the pairs (i, i) are neither
        positives nor negatives.

    Returns
    -------
    Tensor
        Scalar loss; 0 (connected to the graph) when the batch has no valid triplet.
    """
    cos = anchor @ gallery.T
    dist = torch.sqrt(torch.clamp(2.0 - 2.0 * cos, min=1e-12))
    positive, negative = relevant.clone(), ~relevant
    if same_items:
        positive.fill_diagonal_(False)
        negative.fill_diagonal_(False)
    n_neg = negative.sum(dim=1, keepdim=True)
    with torch.no_grad():
        # Per anchor, negatives sorted by distance (non-negatives last as +inf); the first one
        # strictly farther than the positive is the semi-hard negative, else the farthest.
        neg_dist = torch.where(negative, dist, torch.full_like(dist, float("inf")))
        sorted_dist, sorted_idx = neg_dist.sort(dim=1)
        rank = torch.searchsorted(sorted_dist, dist.contiguous(), right=True)
        rank = torch.where(rank < n_neg, rank, (n_neg - 1).clamp(min=0).expand_as(rank))
        chosen = torch.gather(sorted_idx, 1, rank)
    valid = positive & (n_neg > 0)
    if not bool(valid.any()):
        return anchor.sum() * 0.0
    d_an = torch.gather(dist, 1, chosen)
    return F.relu(dist - d_an + margin)[valid].mean()


@dataclass(frozen=True)
class StageLoss:
    """Weights of the stage objective (see the module docstring).

    Attributes
    ----------
    classification_weight : float
        a, weight of the sigmoid cross-entropy term.
    triplet_weight : float
        b, weight of the triplet term.
    margin : float
        Triplet margin.
    """

    classification_weight: float = 1.0
    triplet_weight: float = 1.0
    margin: float = 1.0

    def __call__(self, emb: dict[str, torch.Tensor], logits: dict[str, torch.Tensor],
                 y: torch.Tensor, stage_modalities: Sequence[str],
                 trainable: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Classification and triplet parts (unweighted) of one batch.

        Parameters
        ----------
        emb : dict of Tensor (B, d)
            Embeddings of every modality of the stage.
        logits : dict of Tensor (B, C)
            Classifier logits of the trained modalities.
        y : Tensor of shape (B, C)
            0/1 labels.
        stage_modalities, trainable : sequence of str
            S and T of the module docstring.
        """
        cls = torch.stack([F.binary_cross_entropy_with_logits(logits[m], y)
                           for m in trainable]).mean()
        relevant = (y @ y.T) > 0
        n = len(stage_modalities)
        trip = y.new_zeros(())
        for m in trainable:
            trip = trip + (0.5 / n) * semi_hard_triplet_loss(
                emb[m], emb[m], relevant, margin=self.margin, same_items=True)
        if n > 1:
            w_inter = 0.5 / math.comb(n, 2)
            for i, m in enumerate(stage_modalities):
                for s in stage_modalities[i + 1:]:
                    if m not in trainable and s not in trainable:
                        continue
                    both = (semi_hard_triplet_loss(emb[m], emb[s], relevant, margin=self.margin)
                            + semi_hard_triplet_loss(emb[s], emb[m], relevant,
                                                     margin=self.margin))
                    trip = trip + w_inter * 0.5 * both
        return cls, trip

    def total(self, cls: torch.Tensor, trip: torch.Tensor) -> torch.Tensor:
        """a * classification + b * triplet."""
        return self.classification_weight * cls + self.triplet_weight * trip


@dataclass(frozen=True)
class TrainingSchedule:
    """Optimiser and early-stopping settings of one stage.

    Attributes
    ----------
    learning_rate : float
        Adam step size.
    batch_size : int
    max_epochs : int
    patience : int
        Stop after this many epochs without a lower validation loss; the best weights are
        restored.
    validation_fraction : float
        Share of the rows held out for early stopping (0: no early stopping, train
        ``max_epochs`` and keep the last weights).
    partner_dropout : float
        Probability, per row and attention block, that the partner modality is hidden (encoded
        as a zero vector) while training, so that single-modality inference is in-distribution.
    """

    learning_rate: float = 1e-3
    batch_size: int = 128
    max_epochs: int = 100
    patience: int = 5
    validation_fraction: float = 0.1
    partner_dropout: float = 0.5


def _split(n: int, fraction: float, generator: torch.Generator) -> tuple[torch.Tensor,
                                                                           torch.Tensor]:
    perm = torch.randperm(n, generator=generator)
    n_val = int(round(fraction * n))
    return perm[n_val:], perm[:n_val]


def _epoch(network, inputs, y, rows, stage_modalities, trainable, loss: StageLoss,
           schedule: TrainingSchedule, generator, optimizer=None):
    """One pass over ``rows``; updates the weights when an optimizer is given."""
    totals = torch.zeros(3, dtype=torch.float64)
    for start in range(0, len(rows), schedule.batch_size):
        batch = rows[start:start + schedule.batch_size]
        xb = {m: inputs[m][batch] for m in stage_modalities}
        with torch.set_grad_enabled(optimizer is not None):
            emb = network.embed(xb, trainable=trainable, partner_dropout=schedule.partner_dropout,
                                generator=generator)
            logits = {m: network.head(emb[m]) for m in trainable}
            cls, trip = loss(emb, logits, y[batch], stage_modalities, trainable)
            total = loss.total(cls, trip)
        if optimizer is not None:
            optimizer.zero_grad(set_to_none=True)
            total.backward()
            optimizer.step()
        totals += torch.tensor([total.item(), cls.item(), trip.item()],
                               dtype=torch.float64) * len(batch)
    return (totals / max(len(rows), 1)).tolist()


def train_stage(network, inputs: dict[str, torch.Tensor], y: torch.Tensor, *,
                stage_modalities: Sequence[str], trainable: Sequence[str],
                parameters: Sequence[torch.nn.Parameter], loss: StageLoss,
                schedule: TrainingSchedule, seed: int, stage: int,
                verbose: bool = False) -> list[dict]:
    """Train ``parameters`` of ``network`` on one stage with Adam and early stopping.

    Only ``parameters`` get gradients and updates; every other weight of the network is frozen
    (``requires_grad`` is switched off for the duration of the stage). Shuffling, the
    validation split and the partner-dropout masks come from ``torch.Generator`` objects seeded
    with ``seed``, so a stage is deterministic on CPU. The validation loss uses the same
    objective with a dropout generator re-seeded every epoch (a fixed mask sequence). Each
    epoch's losses are logged at DEBUG, the stage's outcome at INFO.

    Parameters
    ----------
    network : _CommonSpaceNetwork
        Provides ``embed(inputs, trainable=, partner_dropout=, generator=)`` and ``head``.
    inputs : dict of Tensor (N, p_m)
        Features of every modality of the stage, rows aligned.
    y : Tensor of shape (N, C)
        0/1 labels.
    stage_modalities, trainable : sequence of str
        Modalities the stage sees, and those whose embeddings it trains.
    parameters : sequence of Parameter
        The weights trained in this stage.
    loss : StageLoss
    schedule : TrainingSchedule
    seed : int
    stage : int
        Stage number, recorded in the history.
    verbose : bool, default=False
        Show a tqdm progress bar over epochs.

    Returns
    -------
    list of dict
        One record per epoch: ``stage``, ``epoch``, ``train_loss``, ``train_classification``,
        ``train_triplet``, ``val_loss`` (None without a validation split).
    """
    params = list(parameters)
    trained_ids = {id(p) for p in params}
    saved_flags = [(p, p.requires_grad) for p in network.parameters()]
    for p in network.parameters():
        p.requires_grad_(id(p) in trained_ids)
    try:
        split_gen = torch.Generator().manual_seed(seed)
        train_rows, val_rows = _split(y.shape[0], schedule.validation_fraction, split_gen)
        optimizer = torch.optim.Adam(params, lr=schedule.learning_rate)
        shuffle_gen = torch.Generator().manual_seed(seed + 1)
        dropout_gen = torch.Generator().manual_seed(seed + 2)
        history: list[dict] = []
        best_val, best_epoch, best_state, stale = math.inf, -1, None, 0
        bar = tqdm(range(schedule.max_epochs), desc=f"stage {stage}", disable=not verbose,
                   leave=False)
        for epoch in bar:
            order = train_rows[torch.randperm(len(train_rows), generator=shuffle_gen)]
            tr, tr_cls, tr_trip = _epoch(network, inputs, y, order, stage_modalities, trainable,
                                         loss, schedule, dropout_gen, optimizer)
            record = {"stage": stage, "epoch": epoch, "train_loss": tr,
                      "train_classification": tr_cls, "train_triplet": tr_trip,
                      "val_loss": None}
            if len(val_rows):
                val_gen = torch.Generator().manual_seed(seed + 3)
                record["val_loss"] = _epoch(network, inputs, y, val_rows, stage_modalities,
                                            trainable, loss, schedule, val_gen)[0]
            history.append(record)
            val = float("nan") if record["val_loss"] is None else record["val_loss"]
            bar.set_postfix(train=f"{tr:.4f}", val=f"{val:.4f}")
            logger.debug("stage %d epoch %d: train loss %.4f (classification %.4f, triplet "
                         "%.4f), validation loss %.4f", stage, epoch, tr, tr_cls, tr_trip, val)
            if not len(val_rows):
                continue
            if record["val_loss"] < best_val:
                best_val, best_epoch, stale = record["val_loss"], epoch, 0
                best_state = [p.detach().clone() for p in params]
            else:
                stale += 1
                if stale >= schedule.patience:
                    break
        stopped_early = len(history) < schedule.max_epochs
        if len(val_rows):
            logger.info("stage %d (%s): %d epochs, best validation loss %.4f at epoch %d, %s",
                        stage, ", ".join(trainable), len(history), best_val, best_epoch,
                        "stopped early" if stopped_early else "no early stop")
        else:
            logger.info("stage %d (%s): %d epochs, final train loss %.4f, no validation split "
                        "(no early stopping)", stage, ", ".join(trainable), len(history),
                        history[-1]["train_loss"])
        if best_state is not None:
            with torch.no_grad():
                for p, best in zip(params, best_state):
                    p.copy_(best)
        return history
    finally:
        for p, flag in saved_flags:
            p.requires_grad_(flag)
