"""Metric functions on hand-made score matrices with answers worked out by hand."""

from __future__ import annotations

import pytest
import torch

from perception_encoder.eval.metrics import (
    best_positive_rank,
    classification_metrics,
    mean_per_class_recall,
    predictions,
    retrieval_recall,
    target_rank,
    topk_accuracy,
)
from perception_encoder.eval.probe import knn_scores
from perception_encoder.eval.retrieval import retrieval_metrics

# 4 samples, 6 classes. Row-wise descending orders (class indices):
#   row 0: 2 > 0 > 5 > 1 > 3 > 4      target 2 -> rank 0
#   row 1: 4 > 3 > 2 > 1 > 0 > 5      target 0 -> rank 4
#   row 2: 5 > 4 > 3 > 2 > 1 > 0      target 0 -> rank 5
#   row 3: 1 > 2 > 0 > 3 > 4 > 5      target 2 -> rank 1
SCORES = torch.tensor(
    [
        [0.8, 0.3, 0.9, 0.2, 0.1, 0.5],
        [0.1, 0.2, 0.3, 0.4, 0.5, 0.0],
        [0.0, 0.1, 0.2, 0.3, 0.4, 0.5],
        [0.5, 0.9, 0.7, 0.3, 0.2, 0.1],
    ]
)
TARGETS = torch.tensor([2, 0, 0, 2])


def test_target_rank_and_topk_by_hand():
    assert target_rank(SCORES, TARGETS).tolist() == [0, 4, 5, 1]
    assert topk_accuracy(SCORES, TARGETS, 1) == pytest.approx(1 / 4)
    assert topk_accuracy(SCORES, TARGETS, 2) == pytest.approx(2 / 4)
    assert topk_accuracy(SCORES, TARGETS, 5) == pytest.approx(3 / 4)
    assert topk_accuracy(SCORES, TARGETS, 6) == pytest.approx(1.0)


def test_top5_undefined_below_five_classes():
    scores = SCORES[:, :4]
    targets = torch.tensor([2, 0, 0, 2])
    assert topk_accuracy(scores, targets, 5) is None
    m = classification_metrics(scores, targets)
    assert m["top5"] is None
    assert m["top1"] == pytest.approx(1 / 4)  # predictions 2, 3, 3, 1


def test_mean_per_class_recall_by_hand():
    # class 0: 3 samples, 1 right; class 1: 1 sample, right; class 2: 2 samples, 0 right; class 3: absent
    preds = torch.tensor([0, 1, 2, 1, 0, 0])
    targets = torch.tensor([0, 0, 0, 1, 2, 2])
    assert mean_per_class_recall(preds, targets, 4) == pytest.approx((1 / 3 + 1 + 0) / 3)
    # plain accuracy would be 2/6: the two measures differ on unbalanced classes
    m = classification_metrics(torch.nn.functional.one_hot(preds, 4).float(), targets)
    assert m["top1"] == pytest.approx(2 / 6)
    assert m["mean_per_class_recall"] == pytest.approx((1 / 3 + 1 + 0) / 3)


def test_ties_are_broken_by_lower_index():
    scores = torch.tensor([[0.5, 0.5, 0.5], [0.1, 0.7, 0.7], [0.7, 0.7, 0.1]])
    # row 0: all tied -> only class 0 is first; target 2 has rank 2
    # row 1: classes 1 and 2 tied on top; target 2 ranks behind class 1
    # row 2: target 1 ranks behind class 0
    assert target_rank(scores, torch.tensor([2, 2, 1])).tolist() == [2, 1, 1]
    assert target_rank(scores, torch.tensor([0, 1, 0])).tolist() == [0, 0, 0]
    assert predictions(scores).tolist() == [0, 1, 0]  # argmax agrees with the rank rule
    # a constant scorer is not rewarded: only targets equal to class 0 count at top-1
    const = torch.zeros(4, 5)
    assert topk_accuracy(const, torch.tensor([0, 1, 2, 3]), 1) == pytest.approx(0.25)
    assert topk_accuracy(const, torch.tensor([0, 1, 2, 3]), 2) == pytest.approx(0.5)


def test_retrieval_recall_with_several_positives():
    # 3 queries x 5 candidates
    scores = torch.tensor(
        [
            [0.9, 0.8, 0.7, 0.6, 0.5],  # positives {3, 4}: best positive 3 at rank 3
            [0.1, 0.9, 0.3, 0.2, 0.0],  # positives {0, 1}: 1 is first -> rank 0
            [0.5, 0.4, 0.6, 0.9, 0.8],  # positives {0, 2}: 2 ranks behind 3, 4 -> rank 2
        ]
    )
    positives = torch.tensor(
        [
            [False, False, False, True, True],
            [True, True, False, False, False],
            [True, False, True, False, False],
        ]
    )
    assert best_positive_rank(scores, positives).tolist() == [3, 0, 2]
    r = retrieval_recall(scores, positives, ks=(1, 2, 3, 4, 5, 6))
    assert r[1] == pytest.approx(1 / 3)
    assert r[2] == pytest.approx(1 / 3)
    assert r[3] == pytest.approx(2 / 3)
    assert r[4] == pytest.approx(1.0)
    assert r[5] == pytest.approx(1.0)
    assert r[6] is None  # more than the 5 candidates: undefined


def test_retrieval_ties_between_positive_and_negative():
    scores = torch.tensor([[0.5, 0.5, 0.2], [0.5, 0.5, 0.2]])
    first_wins = torch.tensor([[True, False, False], [False, True, False]])
    assert best_positive_rank(scores, first_wins).tolist() == [0, 1]
    # tied positives: the earlier one is the best positive
    both = torch.tensor([[True, True, False], [False, True, True]])
    assert best_positive_rank(scores, both).tolist() == [0, 1]


def test_retrieval_needs_a_positive_per_query():
    with pytest.raises(ValueError, match="query 1 has no positive"):
        best_positive_rank(torch.zeros(2, 3), torch.tensor([[True, False, False], [False, False, False]]))


def test_retrieval_metrics_both_directions_by_hand():
    # 3 images (2-d unit vectors), 4 captions; caption j describes image owner[j]
    img = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    txt = torch.tensor([[1.0, 0.1], [0.0, 1.0], [0.9, 0.5], [1.0, 0.0]])
    owner = [0, 1, 1, 2]
    m = retrieval_metrics(img, txt, owner, ks=(1, 2))
    # image 0 -> best caption 3 (cos 1.0) whose owner is 2: miss at 1; captions 0 (0.995) second: hit at 2
    # image 1 -> caption 1 (1.0): hit.  image 2 -> all captions have cos <= 0; caption 1 (0.0) is best,
    #   then 2 (-0.87), then 0 (-0.995), then 3 (-1): its own caption 3 ranks last -> miss at 1 and 2
    assert m["image_to_text_recall@1"] == pytest.approx(1 / 3)
    assert m["image_to_text_recall@2"] == pytest.approx(2 / 3)
    # caption 0 -> image 0 (hit). caption 1 -> image 1 (hit). caption 2 (0.9, 0.5) -> image 0 first: miss
    # at 1, image 1 second: hit at 2. caption 3 -> image 0 first, image 1 (0.0) second: its image 2 is last
    assert m["text_to_image_recall@1"] == pytest.approx(2 / 4)
    assert m["text_to_image_recall@2"] == pytest.approx(3 / 4)


def test_retrieval_metrics_are_scale_free_and_skip_uncaptioned_queries():
    img = torch.tensor([[3.0, 0.0], [0.0, 0.5], [0.7, 0.7]])  # image 2 has no caption: distractor only
    txt = torch.tensor([[2.0, 0.1], [0.1, 4.0]])
    m = retrieval_metrics(img, txt, [0, 1], ks=(1, 3))
    assert m["image_to_text_recall@1"] == 1.0
    assert m["image_to_text_recall@3"] is None  # only 2 captions
    assert m["text_to_image_recall@1"] == 1.0
    assert m["text_to_image_recall@3"] == 1.0


def test_knn_weighted_vote_by_hand():
    train = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9], [0.2, 0.8]])
    labels = torch.tensor([0, 0, 1, 1, 1])
    test = torch.tensor([[1.0, 0.05], [0.05, 1.0]])
    s = knn_scores(train, labels, test, num_classes=3, k=2, temperature=1.0)
    cos = torch.nn.functional.normalize(test, dim=-1) @ torch.nn.functional.normalize(train, dim=-1).T
    # test 0: nearest are train 0 and 1 (both class 0); test 1: train 3 and 2 (class 1)
    assert s[0, 0].item() == pytest.approx((cos[0, 0].exp() + cos[0, 1].exp()).item())
    assert s[0, 1].item() == 0.0 and s[0, 2].item() == 0.0
    assert s[1, 1].item() == pytest.approx((cos[1, 2].exp() + cos[1, 3].exp()).item())
    # weights matter: with k=5 and a sharp temperature the single closest class-0 sample outweighs 3 far ones
    train2 = torch.tensor([[1.0, 0.0], [0.5, 0.5], [0.5, 0.5], [0.5, 0.5]])
    s2 = knn_scores(train2, torch.tensor([0, 1, 1, 1]), torch.tensor([[1.0, 0.0]]), 2, k=5, temperature=0.05)
    assert s2.argmax().item() == 0
    s3 = knn_scores(train2, torch.tensor([0, 1, 1, 1]), torch.tensor([[1.0, 0.0]]), 2, k=5, temperature=100.0)
    assert s3.argmax().item() == 1  # nearly uniform weights: the majority wins


def test_bad_inputs_raise_clear_errors():
    with pytest.raises(ValueError, match="shape"):
        topk_accuracy(torch.zeros(3), torch.zeros(3), 1)
    with pytest.raises(ValueError, match="class indices"):
        target_rank(torch.zeros(2, 3), torch.tensor([0, 3]))
    with pytest.raises(ValueError, match="NaN"):
        topk_accuracy(torch.tensor([[float("nan"), 0.0]]), torch.tensor([0]), 1)
    with pytest.raises(ValueError, match="k must be"):
        knn_scores(torch.zeros(2, 2), torch.zeros(2), torch.zeros(1, 2), 2, k=0)


def test_nearest_matches_a_stable_sort_with_many_ties():
    from perception_encoder.eval.probe import nearest

    g = torch.Generator().manual_seed(0)
    sims = torch.randint(0, 4, (50, 30), generator=g).float()  # heavy ties
    for k in (1, 3, 7, 30):
        vals, idx = nearest(sims, k)
        ref_vals, ref_idx = sims.sort(dim=1, descending=True, stable=True)
        assert torch.equal(vals, ref_vals[:, :k]) and torch.equal(idx, ref_idx[:, :k])


def test_linear_probe_scores_report_c_and_convergence():
    from perception_encoder.eval.probe import linear_probe_scores

    g = torch.Generator().manual_seed(0)
    centres = torch.randn(3, 8, generator=g) * 3
    y = torch.arange(3).repeat(10)
    x = centres[y] + torch.randn(30, 8, generator=g)
    fit = linear_probe_scores(x, y, centres, num_classes=4, c=[0.1, 10.0])
    assert fit.c in (0.1, 10.0) and fit.converged
    assert fit.scores.shape == (3, 4) and fit.scores[:, 3].eq(float("-inf")).all()  # class 3 never trained
    assert fit.scores[:, :3].argmax(1).tolist() == [0, 1, 2]
    assert not linear_probe_scores(x, y, centres, num_classes=3, max_iter=1).converged
