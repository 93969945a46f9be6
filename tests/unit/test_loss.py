"""lejepa_ray.objective.loss: the LeJEPA objective's parts, their combination and the selection
score."""

from __future__ import annotations

import pytest
import torch

from lejepa_ray.objective.config import LossConfig
from lejepa_ray.objective.loss import LeJEPALoss, build_loss, lejepa_loss, selection_score
from lejepa_ray.objective.sigreg import sigreg


def views(v: int, n: int = 32, k: int = 16, seed: int = 0) -> torch.Tensor:
    return torch.randn(v, n, k, generator=torch.Generator().manual_seed(seed))


def test_parts_and_total_follow_the_definition():
    global_views, local_views = views(2, seed=1), views(6, seed=2)
    all_views = torch.cat([global_views, local_views])
    out = lejepa_loss(global_views, all_views, step=3, lam=0.1, num_slices=64)

    center = global_views.mean(0)
    expected_pred = sum(((center - v) ** 2).mean() for v in all_views) / len(all_views)
    per_view_sigreg = torch.stack([sigreg(v, 3, 64) for v in all_views]).mean()
    torch.testing.assert_close(out.prediction, expected_pred)
    torch.testing.assert_close(out.sigreg, per_view_sigreg)
    torch.testing.assert_close(out.total, 0.9 * expected_pred + 0.1 * per_view_sigreg)
    torch.testing.assert_close(out.selection_score, out.total.detach() / 0.1**0.4)
    assert not out.selection_score.requires_grad


def test_a_rank_share_weights_the_prediction_loss_only():
    global_views, local_views = views(2, seed=1), views(2, seed=2)
    all_views = torch.cat([global_views, local_views])
    plain = lejepa_loss(global_views, all_views, step=3, lam=0.1, num_slices=64)
    heavy = lejepa_loss(
        global_views, all_views, step=3, lam=0.1, num_slices=64, prediction_weight=1.5
    )
    torch.testing.assert_close(heavy.prediction, 1.5 * plain.prediction)
    torch.testing.assert_close(heavy.sigreg, plain.sigreg)  # already the global batch's
    torch.testing.assert_close(heavy.total, 0.9 * heavy.prediction + 0.1 * plain.sigreg)
    with pytest.raises(ValueError, match="prediction_weight must be > 0"):
        lejepa_loss(global_views, all_views, step=3, prediction_weight=0.0)


def test_identical_views_have_zero_prediction_loss():
    v = views(1).expand(4, -1, -1)
    assert lejepa_loss(v[:2], v, step=0).prediction.item() == 0.0


def test_no_stop_gradient_target_gets_gradient():
    global_views = views(2, seed=3).requires_grad_(True)
    local_views = views(3, seed=4).requires_grad_(True)
    out = lejepa_loss(global_views, torch.cat([global_views, local_views]), step=1, num_slices=32)
    out.total.backward()
    assert global_views.grad.abs().sum() > 0 and local_views.grad.abs().sum() > 0


def test_selection_score_scaling_and_metrics():
    assert selection_score(2.0, 0.05) == pytest.approx(2.0 / 0.05**0.4)
    assert selection_score(2.0, 0.05, alpha=0.0) == 2.0
    out = lejepa_loss(views(2), views(5), step=0, alpha=0.5)
    metrics = out.as_metrics()
    assert set(metrics) == {"loss", "prediction", "sigreg", "selection_score"}
    assert metrics["selection_score"] == pytest.approx(metrics["loss"] / 0.05**0.5, rel=1e-6)
    assert isinstance(out, LeJEPALoss)


def test_the_parts_travel_by_name():
    """stack/unstack follow the fields, so a new part needs no count or index anywhere."""
    out = lejepa_loss(views(2), views(5), step=0)
    assert LeJEPALoss.names() == ("total", "prediction", "sigreg", "selection_score")
    stacked = out.stack()
    assert stacked.shape == (len(LeJEPALoss.names()),)
    back = LeJEPALoss.unstack(stacked)
    for name in LeJEPALoss.names():
        assert torch.equal(getattr(back, name), getattr(out, name).detach().float()), name
    assert list(LeJEPALoss.metric_names().values()) == [
        "loss",
        "loss/prediction",
        "loss/sigreg",
        "selection_score",
    ]


def test_the_loss_is_built_from_its_config():
    cfg = LossConfig(lam=0.1, num_slices=64, alpha=0.5)
    g, a = views(2), views(5)
    built = build_loss(cfg, prediction_weight=1.5)(g, a, 3)
    direct = lejepa_loss(g, a, 3, lam=0.1, num_slices=64, alpha=0.5, prediction_weight=1.5)
    torch.testing.assert_close(built.stack(), direct.stack())


def test_bf16_autocast_gives_float32_loss():
    torch.manual_seed(0)
    model = torch.nn.Linear(10, 16)
    x = torch.randn(4, 32, 10)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        emb = model(x)
        out = lejepa_loss(emb[:2], emb, step=0, num_slices=64)
    assert emb.dtype == torch.bfloat16
    assert out.total.dtype == out.prediction.dtype == out.sigreg.dtype == torch.float32
    out.total.backward()
    assert torch.isfinite(model.weight.grad).all()


@pytest.mark.parametrize(
    ("global_views", "all_views", "lam", "match"),
    [
        (views(2), views(4), 0.0, r"lam \(λ\) must lie in \(0, 1\)"),
        (views(2), views(4), 1.0, r"lam \(λ\) must lie in \(0, 1\)"),
        (views(2)[0], views(4), 0.05, r"global_views must have shape \(V, N, K\)"),
        (views(2), views(4, n=16), 0.05, "must share N"),
        (views(2), views(4, k=8), 0.05, "must share N"),
    ],
)
def test_bad_arguments_raise(global_views, all_views, lam, match):
    with pytest.raises(ValueError, match=match):
        lejepa_loss(global_views, all_views, step=0, lam=lam)
