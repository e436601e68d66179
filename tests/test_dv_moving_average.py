"""MINE's moving average of DV (bounds.DV(moving_average=...)): updated once per training step,
by the critic's loss; read, not updated, by the VAE's loss; saved and restored with checkpoints."""
from __future__ import annotations

import pytest
import torch

import infomax_ext as im
from infomax_ext import bounds
from infomax_ext.checkpoint import validate_checkpoint
from infomax_ext.serialization import SerializationError
from infomax_ext.trainer import CHECKPOINT_FILE, TrainConfig, Trainer, build_model
from test_trainer import data, tiny

GAMMA = 0.8




def dv_tiny(**kw) -> TrainConfig:
    """tiny() training with DV and GAMMA: the config a dv_model trains under."""
    return tiny(bound="dv", dv_moving_average=GAMMA, **kw)


def dv_model(config: TrainConfig, shape=(6,)) -> im.InfoMaxVAE:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        model = build_model(config, shape)
    model.bound = bounds.DV(moving_average=GAMMA)
    return model


def recording(dv: bounds.DV) -> list[float]:
    """Record every batch mean ``dv`` takes into its average (the instance's method wrapped)."""
    seen: list[float] = []
    update = dv.update_average

    def wrapped(batch_mean: torch.Tensor) -> torch.Tensor:
        seen.append(float(batch_mean))
        return update(batch_mean)

    dv.update_average = wrapped  # type: ignore[method-assign]
    return seen


def recomputed(means: list[float], gamma: float = GAMMA) -> float:
    average = None
    for m in means:
        m = min(max(m, 1e-4), 1e4)
        average = m if average is None else gamma * average + (1 - gamma) * m
    assert average is not None
    return average


@pytest.mark.parametrize("reuse_forward", [False, True])
def test_one_update_per_train_step_and_the_average_is_the_recurrence(reuse_forward):
    config = tiny()
    model = dv_model(config)
    dv = model.bound
    seen = recording(dv)
    opt = {"vae": torch.optim.Adam(model.vae.parameters(), 1e-2),
           "mi": torch.optim.Adam(model.mi.parameters(), 1e-2)}
    x, _ = data()
    for k in range(1, 6):
        im.train_step(model, x[:16], opt, reuse_forward=reuse_forward)
        assert len(seen) == k and dv.average_updates == k
    assert float(dv.ema) == pytest.approx(recomputed(seen), rel=1e-6)
    assert len(set(seen)) == len(seen)  # a new batch mean every step


def test_the_critic_loss_updates_and_the_vae_loss_only_reads():
    torch.manual_seed(0)
    model = dv_model(tiny())
    dv = model.bound
    x, _ = data()
    im.infomaxloss(model.vae, model.mi, x[:16], bound=dv, seed=1)
    assert dv.ema is None and dv.average_updates == 0
    loss = im.miloss(model.vae, model.mi, x[:16], bound=dv, seed=1)
    loss.backward()
    assert dv.average_updates == 1
    first = dv.ema.clone()
    im.infomaxloss(model.vae, model.mi, x[:16], bound=dv, seed=2).backward()
    assert dv.average_updates == 1 and torch.equal(dv.ema, first)


def test_a_view_reads_the_average_without_updating_it():
    dv = bounds.DV(moving_average=GAMMA)
    view = dv.without_state_update()
    assert view == dv and view is not dv
    assert bounds.DV().without_state_update() is not None
    g = torch.Generator().manual_seed(0)
    joint = torch.randn(10, dtype=torch.float64, generator=g, requires_grad=True)
    neg = torch.randn(12, dtype=torch.float64, generator=g, requires_grad=True)
    # before any update: the view uses this batch's mean, and stores nothing
    (g_neg,) = torch.autograd.grad(view(joint, neg), [neg])
    batch = torch.exp(neg.detach()).mean()
    torch.testing.assert_close(g_neg, -torch.exp(neg.detach()) / 12 / batch)
    assert dv.ema is None and dv.average_updates == 0
    dv(joint, neg).backward()
    other = torch.randn(12, dtype=torch.float64, generator=g, requires_grad=True)
    (g_other,) = torch.autograd.grad(view(joint, other), [other])
    # the shared average (this batch's mean after one update), not the view's own batch
    torch.testing.assert_close(g_other, -torch.exp(other.detach()) / 12 / batch)
    assert dv.average_updates == 1
    with torch.no_grad():  # no graph: no update
        dv(joint, other)
    assert dv.average_updates == 1


def test_average_state_roundtrip_and_bad_states():
    dv = bounds.DV(moving_average=GAMMA)
    assert dv.average_state() is None
    for m in (torch.tensor([0.5, 1.0]), torch.tensor([2.0, 3.0])):
        dv(torch.zeros(2, requires_grad=True), m.requires_grad_())
    state = dv.average_state()
    assert state is not None and state["updates"] == 2
    assert float(state["average"]) == pytest.approx(
        recomputed([float(torch.exp(torch.tensor([0.5, 1.0])).mean()),
                    float(torch.exp(torch.tensor([2.0, 3.0])).mean())]), rel=1e-6)
    fresh = bounds.DV(moving_average=GAMMA)
    fresh.load_average_state(state)
    assert torch.equal(fresh.ema, dv.ema) and fresh.average_updates == 2
    for bad in ({"average": torch.tensor(float("nan")), "updates": 1},
                {"average": torch.tensor(1.0), "updates": 0},
                {"average": torch.ones(2), "updates": 1}, {"average": torch.tensor(1.0)}):
        with pytest.raises(ValueError, match="dv average state"):
            fresh.load_average_state(bad)
    with pytest.raises(ValueError, match="no running average"):
        bounds.DV().load_average_state(state)


def test_resume_continues_the_average_bit_for_bit(tmp_path):
    x, v = data()
    straight = Trainer(dv_model(dv_tiny(epochs=3)), dv_tiny(epochs=3), x, v, tmp_path / "a",
                       progress=False)
    straight.fit()

    first = Trainer(dv_model(dv_tiny(epochs=1)), dv_tiny(epochs=1), x, v, tmp_path / "b",
                    progress=False)
    first.fit()
    torch.manual_seed(123)  # whatever happens in between does not matter
    resumed = Trainer.from_checkpoint(tmp_path / "b" / CHECKPOINT_FILE, x, v, epochs=3,
                                      progress=False)
    assert resumed.model.bound.average_updates == first.model.bound.average_updates > 0
    assert torch.equal(resumed.model.bound.ema, first.model.bound.ema)
    resumed.fit()
    assert torch.equal(resumed.model.bound.ema, straight.model.bound.ema)
    assert resumed.model.bound.average_updates == straight.model.bound.average_updates
    for k, a in straight.model.state_dict().items():
        assert torch.equal(a, resumed.model.state_dict()[k]), k
    drop = lambda h: [{k: r[k] for k in r if k != "seconds"} for r in h]  # noqa: E731
    assert drop(straight.history) == drop(resumed.history)


def test_checkpoint_refuses_a_bound_state_that_does_not_fit(tmp_path):
    x, v = data()
    trainer = Trainer(dv_model(dv_tiny(epochs=1)), dv_tiny(epochs=1), x, v, progress=False)
    trainer.fit()
    state = trainer.state_dict()
    assert validate_checkpoint(state, tmp_path / "c.pt", TrainConfig) is state
    bad = dict(state, bound_state={"average": torch.tensor(float("inf")), "updates": 3})
    with pytest.raises(SerializationError, match="bound_state"):
        validate_checkpoint(bad, tmp_path / "c.pt", TrainConfig)
    plain = Trainer(build_model(tiny(epochs=1), (6,)), tiny(epochs=1), x, v, progress=False)
    assert "bound_state" not in plain.state_dict()
    other = dict(plain.state_dict(), bound_state=state["bound_state"])
    with pytest.raises(SerializationError, match="keeps no running average"):
        validate_checkpoint(other, tmp_path / "c.pt", TrainConfig)


def test_train_config_and_command_set_the_moving_average(tmp_path, capsys, one_thread):
    import json

    from infomax_ext.cli import main
    from infomax_ext.serialization import safe_torch_load

    assert tiny(bound="dv", dv_moving_average=0.9).mi_bound() == bounds.DV(moving_average=0.9)
    assert tiny(bound="dv").mi_bound() == bounds.DV()
    with pytest.raises(ValueError, match="dv_moving_average is a setting of bound 'dv'"):
        tiny(dv_moving_average=0.9).validate()
    with pytest.raises(ValueError, match=r"dv_moving_average must be a number in \[0, 1\)"):
        tiny(bound="dv", dv_moving_average=1.0).validate()
    out = tmp_path / "run"
    args = ["--latent-dim", "2", "--encoder-neurons", "8", "--decoder-neurons", "8",
            "--mi-neurons", "8", "--eval-mi-steps", "2", "--batch-size", "256", "--quiet",
            "--no-plots"]
    assert main(["train", "--out", str(out), "--epochs", "1", "--bound", "dv",
                 "--dv-moving-average", "0.9", *args]) == 0
    train = json.loads((out / "config.json").read_text())["train"]
    assert train["bound"] == "dv" and train["dv_moving_average"] == 0.9
    assert im.InfoMaxVAE.load(out / "model").bound == bounds.DV(moving_average=0.9)
    state = safe_torch_load(out / CHECKPOINT_FILE)["bound_state"]
    assert state["updates"] >= 1 and 1e-4 <= float(state["average"]) <= 1e4
    capsys.readouterr()
    with pytest.raises(SystemExit):
        main(["train", "--out", str(tmp_path / "bad"), "--dv-moving-average", "0.5", "--quiet"])
    assert "dv_moving_average is a setting of bound 'dv'" in capsys.readouterr().err
