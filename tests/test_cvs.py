"""CVS / M-CVS / RVS on planted multi-modal data, the mAP@50 metric, loss logging, the
plain-data form that persistence stores, and bad input."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch

from image2vec.baselines import CVS, MCVS, RVS
from image2vec.baselines.cvs_train import semi_hard_triplet_loss
from image2vec.metrics import cross_modal_map_at_k

torch.set_num_threads(1)

SMALL = dict(hidden_size=32, attention_size=32, max_epochs=30, patience=5)


def planted(n_train=1000, n_test=400, n_classes=2, seed=0, p=24, latent=6, noise=0.2,
            pair_signal=True):
    """Three modalities of the same items, each a cluster seen through its own random map.

    With ``pair_signal`` the label is (u + v) mod n_classes: modality ``a`` shows only the
    cluster of u, ``b`` only the cluster of v, so neither alone says anything about the label,
    only the pair (a, b) does, through an interaction (XOR for two classes). Modality ``c``
    shows the label's cluster. Without ``pair_signal`` all three show the label's cluster.
    Returns train features, train labels, test features, test labels.
    """
    rng = np.random.default_rng(seed)
    n = n_train + n_test
    u, v = rng.integers(0, n_classes, n), rng.integers(0, n_classes, n)
    label = (u + v) % n_classes
    feats = {}
    for name, z in zip("abc", (u, v, label) if pair_signal else (label,) * 3):
        centres = rng.standard_normal((n_classes, latent))
        linear_map = rng.standard_normal((latent, p)) / np.sqrt(latent)
        noisy = centres[z] + noise * rng.standard_normal((n, latent))
        feats[name] = (noisy @ linear_map).astype(np.float32)
    Y = np.eye(n_classes, dtype=np.float32)[label]
    train = {m: x[:n_train] for m, x in feats.items()}
    test = {m: x[n_train:] for m, x in feats.items()}
    return train, Y[:n_train], test, Y[n_train:]


@pytest.fixture(scope="module")
def data():
    """Planted data whose label only the pair (a, b) carries (attention test)."""
    return planted()


@pytest.fixture(scope="module")
def clusters():
    """Planted data, four categories visible in every modality (M-CVS, RVS, persistence)."""
    return planted(n_classes=4, pair_signal=False, seed=1)


def chance_map(labels, seed=0):
    """mAP@50 of random embeddings: the chance level for these labels."""
    rng = np.random.default_rng(seed)
    q, g = rng.standard_normal((2, len(labels), 16))
    return cross_modal_map_at_k(q, labels, g, labels)


# ----------------------------------------------------------------------------- metric and loss
def test_map_at_k_hand_computed():
    # gallery: g0 label B, g1 label A, g2 labels A and B, g3 no label
    gallery = np.array([[0.8, 0.6], [1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    gallery_labels = np.array([[0, 1], [1, 0], [1, 1], [0, 0]])
    queries = np.array([[2.0, 0.0], [-0.6, 0.8]])
    query_labels = np.array([[1, 0], [0, 1]])
    # query 0 (A): cosines g0 .8, g1 1, g2 0, g3 -1 -> g1 g0 g2 g3, relevant at ranks 1 and 3
    #   AP@50 = (1/1 + 2/3) / 2 = 5/6, AP@2 = (1/1) / 1 = 1
    # query 1 (B): cosines g0 0, g1 -.6, g2 .8, g3 .6 -> g2 g3 g0 g1, relevant at ranks 1, 3
    #   AP@50 = 5/6, AP@2 = 1
    assert cross_modal_map_at_k(queries, query_labels, gallery, gallery_labels, k=50) \
        == pytest.approx(5 / 6)
    assert cross_modal_map_at_k(queries, query_labels, gallery, gallery_labels, k=2) \
        == pytest.approx(1.0)
    # query 0 against (g3, g0): g0 ranks first but has label B only -> nothing relevant in top 1
    assert cross_modal_map_at_k(queries[:1], query_labels[:1], gallery[[3, 0]],
                                gallery_labels[[3, 0]], k=1) == 0.0
    # gallery (g1, g3): query 0 finds g1 first (AP 1), query 1 has nothing relevant (AP 0)
    assert cross_modal_map_at_k(queries, query_labels, gallery[[1, 3]],
                                gallery_labels[[1, 3]]) == pytest.approx(0.5)


def test_map_at_k_rejects_bad_input():
    q, y = np.ones((3, 2)), np.ones((3, 1))
    with pytest.raises(ValueError, match="dimension"):
        cross_modal_map_at_k(q, y, np.ones((3, 4)), y)
    with pytest.raises(ValueError, match="NaN"):
        cross_modal_map_at_k(np.full((3, 2), np.nan), y, q, y)
    with pytest.raises(ValueError, match="k must be"):
        cross_modal_map_at_k(q, y, q, y, k=0)


def test_semi_hard_triplet_loss_matches_brute_force():
    gen = torch.Generator().manual_seed(0)
    for same in (False, True):
        a = torch.nn.functional.normalize(torch.randn(9, 3, generator=gen), dim=1)
        g = a if same else torch.nn.functional.normalize(torch.randn(9, 3, generator=gen), dim=1)
        y = (torch.rand(9, 3, generator=gen) < 0.4).float()
        rel = (y @ y.T) > 0
        d = torch.cdist(a.double(), g.double())
        losses = []
        for i in range(9):
            negs = [k for k in range(9) if not rel[i, k] and not (same and k == i)]
            for j in range(9):
                if not negs or not rel[i, j] or (same and i == j):
                    continue
                farther = [d[i, k] for k in negs if d[i, k] > d[i, j]]
                d_an = min(farther) if farther else max(d[i, k] for k in negs)
                losses.append(max(0.0, float(d[i, j] - d_an + 0.3)))
        got = semi_hard_triplet_loss(a, g, rel, margin=0.3, same_items=same)
        assert float(got) == pytest.approx(np.mean(losses), abs=1e-5)


# ----------------------------------------------------------------------------- CVS
@pytest.fixture(scope="module")
def cvs_ab(data):
    train, y, _, _ = data
    pair = {m: train[m] for m in "ab"}
    # The pair's signal needs more epochs than SMALL allows (0.79 after 30 epochs, 1.00 by 80).
    settings = {**SMALL, "max_epochs": 80, "patience": 15}
    return {att: CVS(attention=att, random_state=0, **settings).fit(pair, y)
            for att in ("full", "none")}


def paired_map(model, test, labels):
    """a -> b retrieval where each item is embedded with its aligned partner as context."""
    ea = model.transform("a", test["a"], context={"b": test["b"]})
    eb = model.transform("b", test["b"], context={"a": test["a"]})
    return cross_modal_map_at_k(ea, labels, eb, labels, k=50)


def test_cvs_attention_recovers_signal_only_the_pair_carries(data, cvs_ab):
    _, _, test, y_test = data
    chance = chance_map(y_test)
    with_attention = paired_map(cvs_ab["full"], test, y_test)
    without = paired_map(cvs_ab["none"], test, y_test)
    # measured (seed 0): full 1.00, none 0.53, chance 0.54
    assert with_attention > chance + 0.3
    assert with_attention > without + 0.3
    assert abs(without - chance) < 0.05  # neither modality alone knows the label


def test_cvs_records_loss_curves_and_stages(cvs_ab):
    model = cvs_ab["full"]
    hist = model.history_
    assert [h["epoch"] for h in hist] == list(range(len(hist)))
    assert all(h["val_loss"] is not None and np.isfinite(h["train_loss"]) for h in hist)
    assert hist[-1]["train_loss"] < hist[0]["train_loss"]
    assert model.stages_ == [{"modalities": ["a", "b"], "blocks": ["a:b"],
                              "n_parameters": model.stages_[0]["n_parameters"]}]

def test_loss_curves_are_logged_and_training_stops_early(caplog):
    stopped = CVS(attention="none", random_state=0, **{**SMALL, "patience": 1,
                                                       "max_epochs": 50})
    train, y, _, _ = planted(n_train=300, n_test=1)
    with caplog.at_level(logging.DEBUG, logger="image2vec.baselines.cvs_train"):
        stopped.fit({m: train[m] for m in "ab"}, y)
    vals = [h["val_loss"] for h in stopped.history_]
    assert len(vals) < 50 and vals[-1] >= min(vals[:-1])  # stopped on a non-improving epoch
    epochs = [r.getMessage() for r in caplog.records if r.levelno == logging.DEBUG]
    stages = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    assert len(epochs) == len(vals) and epochs[0].startswith("stage 0 epoch 0: train loss")
    assert stages == [f"stage 0 (a, b): {len(vals)} epochs, best validation loss "
                      f"{min(vals):.4f} at epoch {int(np.argmin(vals))}, stopped early"]


def test_cvs_is_deterministic_and_defaults_follow_the_paper():
    train, y, test, _ = planted(n_train=200, n_test=20)
    def fit():
        return CVS(random_state=3, **{**SMALL, "max_epochs": 2}).fit(train, y)

    e1, e2 = fit().transform("c", test["c"]), fit().transform("c", test["c"])
    assert np.array_equal(e1, e2)
    assert np.allclose(np.linalg.norm(e1, axis=1), 1.0, atol=1e-5)
    keys = {att: set(CVS(attention=att, random_state=3, **{**SMALL, "max_epochs": 1})
                     .fit(train, y).network_.state_dict()) for att in ("full", "no_cross", "none")}
    assert {"blocks.a:b.w_is.weight", "blocks.a:c.w_e.weight"} <= keys["full"]
    assert not any("w_is" in k for k in keys["no_cross"]) and "blocks.b:c.w_s.weight" in \
        keys["no_cross"]
    assert not any(k.startswith("blocks.") for k in keys["none"])
    model = CVS()
    assert (model.hidden_size, model.attention_size, model.learning_rate, model.batch_size,
            model.margin) == (512, 512, 1e-3, 128, 1.0)


# ----------------------------------------------------------------------------- M-CVS
@pytest.fixture(scope="module")
def mcvs_stages(clusters):
    train, y, _, _ = clusters
    model = MCVS(stages=[["c", "a"]], random_state=0, **SMALL)
    model.fit({m: train[m] for m in "ca"}, y)
    before = {k: v.detach().clone() for k, v in model.network_.state_dict().items()}
    _, _, test, _ = clusters
    emb_before = {"c": model.transform("c", test["c"]), "a": model.transform("a", test["a"]),
                  "c|a": model.transform("c", test["c"], context={"a": test["a"]})}
    model.add_modality("b", train, y)
    return model, before, emb_before


def test_mcvs_adding_a_modality_leaves_earlier_embeddings_bit_identical(clusters,
                                                                      mcvs_stages):
    model, before, emb_before = mcvs_stages
    _, _, test, y_test = clusters
    assert np.array_equal(model.transform("c", test["c"]), emb_before["c"])
    assert np.array_equal(model.transform("a", test["a"]), emb_before["a"])
    # context with the new modality too: earlier modalities do not route through new blocks
    assert np.array_equal(model.transform("c", test["c"], context={"a": test["a"],
                                                                   "b": test["b"]}),
                          emb_before["c|a"])
    after = model.network_.state_dict()
    assert all(torch.equal(after[k], v) for k, v in before.items())
    assert model.stages_[1]["modalities"] == ["b"]
    assert model.stages_[1]["blocks"] == ["c:b", "a:b"]
    # the new stage learnt: b embedded alone retrieves the frozen c embeddings' categories
    eb = model.transform("b", test["b"])
    measured = cross_modal_map_at_k(eb, y_test, model.transform("c", test["c"]), y_test)
    assert measured > chance_map(y_test) + 0.4


# ----------------------------------------------------------------------------- RVS
@pytest.fixture(scope="module")
def rvs_model(clusters):
    train, y, _, _ = clusters
    model = RVS(reference="c", random_state=0, **SMALL)
    model.fit({m: train[m] for m in "ca"}, y)
    ref_part = {k: v.detach().clone()
                for k, v in model.network_.reference_attention.state_dict().items()}
    model.add_modality("b", train, y)
    return model, ref_part


def test_rvs_trains_one_block_per_added_modality_with_a_frozen_reference_part(clusters,
                                                                              rvs_model):
    model, ref_part = rvs_model
    h, att, p = 32, 32, 24
    encoder = p * h + h + h * h + h
    block = 3 * h * att + att * h  # W_m, W_r, W_mr and the per-modality part of W_e
    reference = h * att + att * h  # W_r^r and the reference part of W_e
    head = h * 4 + 4
    assert [s["modalities"] for s in model.stages_] == [["c"], ["a"], ["b"]]
    assert [s["blocks"] for s in model.stages_] == [[], ["a:c"], ["b:c"]]
    assert [s["n_parameters"] for s in model.stages_] == [
        encoder + reference + head, encoder + block, encoder + block]
    now = model.network_.reference_attention.state_dict()
    assert all(torch.equal(now[k], v) for k, v in ref_part.items())
    assert all(p.requires_grad for p in model.network_.parameters())  # flags restored
    _, _, test, y_test = clusters
    chance = chance_map(y_test)
    ref = model.transform("c", test["c"])
    for m in "ab":  # each added modality, embedded alone, lands on the reference's categories
        emb = model.transform(m, test[m])
        assert cross_modal_map_at_k(emb, y_test, ref, y_test) > chance + 0.4


# ----------------------------------------------------------------------------- persistence
def fresh(model):
    """An unfitted model of the same class and network shape as ``model``."""
    if isinstance(model, RVS):
        return RVS(reference=model.reference, **SMALL)
    return MCVS(**SMALL)


@pytest.mark.parametrize("which", ["mcvs", "rvs"])
def test_exported_network_restores_bit_identical(clusters, mcvs_stages, rvs_model, which):
    """The plain data that persistence stores (see test_common_space for the file round trip)."""
    model = mcvs_stages[0] if which == "mcvs" else rvs_model[0]
    _, _, test, _ = clusters
    weights, layout = model.export_network()
    assert weights.dtype == np.float32 and weights.ndim == 1
    layout = json.loads(json.dumps(layout))  # what the file keeps
    loaded = fresh(model).restore_network(weights.copy(), layout, model.history_)
    assert loaded.history_ == model.history_ and loaded.stages_ == model.stages_
    for m in "abc":
        context = {"c": test["c"]} if m != "c" else None
        assert np.array_equal(loaded.transform(m, test[m], context),
                              model.transform(m, test[m], context))
    with pytest.raises(ValueError, match="values but the layout needs"):
        fresh(model).restore_network(weights[:-1], layout)
    other = MCVS(**SMALL) if which == "rvs" else RVS(reference="c", **SMALL)
    with pytest.raises(ValueError, match="do not match a"):
        other.restore_network(weights, layout)


# ----------------------------------------------------------------------------- bad input
def test_bad_input_gives_clear_errors(clusters, rvs_model):
    train, y, test, _ = clusters
    model = CVS(**SMALL)
    with pytest.raises(ValueError, match="modality 'b' have 999 rows but 1000"):
        model.fit({"a": train["a"], "b": train["b"][:999]}, y)
    nan = train["a"].copy()
    nan[3, 2] = np.nan
    with pytest.raises(ValueError, match="modality 'a' contains NaN"):
        model.fit({"a": nan, "b": train["b"]}, y)
    with pytest.raises(ValueError, match="labels Y have 10 rows"):
        model.fit({"a": train["a"]}, y[:10])
    with pytest.raises(ValueError, match="attention must be one of"):
        CVS(attention="sometimes").fit({"a": train["a"]}, y)
    with pytest.raises(ValueError, match="not fitted"):
        model.transform("a", test["a"])
    fitted = rvs_model[0]
    with pytest.raises(ValueError, match="unknown modality 'image'"):
        fitted.transform("image", test["a"])
    with pytest.raises(ValueError, match="unknown modality 'tags'"):
        fitted.transform("a", test["a"], context={"tags": test["b"]})
    with pytest.raises(ValueError, match="have 5 columns but the model was trained with 24"):
        fitted.transform("a", test["a"][:, :5])
    with pytest.raises(ValueError, match="modality 'c' have 3 rows"):
        fitted.transform("a", test["a"], context={"c": test["c"][:3]})
    with pytest.raises(ValueError, match="reference modality 'image'"):
        RVS(reference="image", **SMALL).fit({"a": train["a"]}, y)
    with pytest.raises(ValueError, match="already in the model"):
        fitted.add_modality("a", train, y)
    with pytest.raises(ValueError, match="features lack modality 'c'"):
        fitted.add_modality("d", {"d": train["a"]}, y)
