"""The table of MI bounds (infomax_ext.bounds): values and training gradients against float64
formulas written out here, against torch-mist 0.2.17's estimators on the same critic scores (a
test-only dependency, skipped when absent), and the ``bound=`` parameter through the API."""
import math

import pytest
import torch
import torch.nn.functional as F

import infomax_ext as im
from infomax_ext import bounds
from infomax_ext.mutual_info import paired_mutual_info

torch.set_default_dtype(torch.float32)

NAMES = list(im.BOUNDS)


def _scores(n=7, seed=0, scale=2.0):
    g = torch.Generator().manual_seed(seed)
    return (scale * torch.randn(n, n, generator=g, dtype=torch.float64)).requires_grad_()


def _offdiag(s):
    n = s.shape[0]
    return torch.stack([s[i, j] for i in range(n) for j in range(n) if i != j])


# Formulas written out element by element (float64), independent of bounds.py and of csrc/:
# bound_value / bound_objective on joint scores (M,) and negatives (K,) for the bounds that take
# shuffled negatives (also the oracle of tests/test_bound_op.py), _value / _objective on an
# (N, N) matrix of all pairs.
def bound_value(name, joint, neg, tau=5.0):
    m, k = joint.numel(), neg.numel()
    mean_joint = sum(joint) / m
    if name == "nwj":
        return mean_joint - sum(torch.exp(t - 1) for t in neg) / k
    if name == "dv":
        return mean_joint - torch.log(sum(torch.exp(t) for t in neg) / k)
    if name == "js":
        return mean_joint + 1 - sum(torch.exp(t) for t in neg) / k
    if name == "smile":
        return mean_joint - torch.log(sum(torch.exp(torch.clamp(t, -tau, tau)) for t in neg) / k)
    raise AssertionError(name)


def bound_objective(name, joint, neg, tau=5.0):
    """The function whose gradient trains the critic."""
    if name in ("js", "smile"):
        return (-sum(F.softplus(-t) for t in joint) / joint.numel()
                - sum(F.softplus(t) for t in neg) / neg.numel())
    return bound_value(name, joint, neg, tau)


def _value(name, s, tau=5.0):
    n = s.shape[0]
    if name == "infonce":
        rows = [s[i, i] - torch.log(sum(torch.exp(s[i, j]) for j in range(n))) for i in range(n)]
        return sum(rows) / n + math.log(n)
    return bound_value(name, torch.diagonal(s), _offdiag(s), tau)


def _objective(name, s):
    if name == "infonce":
        return _value(name, s)
    return bound_objective(name, torch.diagonal(s), _offdiag(s))


@pytest.mark.parametrize("name", NAMES)
def test_value_and_gradient_against_formulas(name):
    s = _scores()
    got = im.BOUNDS[name].from_matrix(s)
    want = _value(name, s)
    assert torch.allclose(got, want, rtol=1e-12, atol=1e-12)
    g_got, = torch.autograd.grad(got, s)
    g_want, = torch.autograd.grad(_objective(name, s), s)
    assert torch.allclose(g_got, g_want, rtol=1e-12, atol=1e-12)


def test_smile_clip_setting():
    s = _scores(scale=6.0)  # scores beyond the clip
    for tau in (1.0, 5.0):
        got = bounds.SMILE(clip=tau).from_matrix(s)
        assert torch.allclose(got, _value("smile", s, tau), rtol=1e-12, atol=1e-12)
    assert bounds.SMILE(1.0).from_matrix(s) != bounds.SMILE(5.0).from_matrix(s)
    assert bounds.resolve_bound("smile", clip=2.0) == bounds.SMILE(2.0)


def test_nwj_is_the_compiled_bound_bit_for_bit():
    joint, neg = torch.randn(64), torch.randn(64)
    assert torch.equal(im.BOUNDS["nwj"](joint, neg), im.nwj_bound(joint, neg))


def test_surrogate_keeps_the_value_bit_for_bit():
    joint, neg = torch.randn(33, requires_grad=True), torch.randn(40, requires_grad=True)
    with torch.no_grad():  # no surrogate: the value alone (the compiled op's, or the formula's)
        plain = bounds.JS()(joint, neg)
    assert torch.equal(im.BOUNDS["js"](joint, neg).detach(), plain)
    with im.use_reference_path():
        with torch.no_grad():
            plain = bounds.JS().value(joint, neg)
        assert torch.equal(im.BOUNDS["js"](joint, neg).detach(), plain)


def test_dv_moving_average_gradient():
    """MINE's correction: the log term's gradient is grad mean exp(T_m) / ema."""
    gamma = 0.9
    dv = bounds.DV(moving_average=gamma)
    ema = None
    for step in range(3):
        joint = torch.randn(10, dtype=torch.float64, requires_grad=True)
        neg = torch.randn(12, dtype=torch.float64, requires_grad=True)
        value = dv(joint, neg)
        assert torch.allclose(value, joint.mean() - torch.log(torch.exp(neg).mean()))
        batch = float(torch.exp(neg.detach()).mean())
        ema = batch if ema is None else gamma * ema + (1 - gamma) * batch
        g_joint, g_neg = torch.autograd.grad(value, (joint, neg))
        assert torch.allclose(g_joint, torch.full_like(joint, 1 / 10))
        assert torch.allclose(g_neg, -torch.exp(neg).detach() / 12 / ema, rtol=1e-12)


@pytest.mark.parametrize("bad, match", [
    ("mine", "unknown bound"), (3, "unknown bound"), ({"name": "dv", "tau": 1}, "takes no setting"),
])
def test_resolve_bound_errors(bad, match):
    with pytest.raises(ValueError, match=match):
        bounds.resolve_bound(bad)


@pytest.mark.parametrize("kwargs, match", [
    ({"clip": 0}, "clip"), ({"clip": float("inf")}, "clip"), ({"clip": True}, "clip"),
])
def test_smile_bad_clip(kwargs, match):
    with pytest.raises(ValueError, match=match):
        bounds.SMILE(**kwargs)


def test_dv_bad_moving_average():
    with pytest.raises(ValueError, match="moving_average"):
        bounds.DV(moving_average=1.0)


@pytest.mark.parametrize("bound", [bounds.NWJ(), bounds.DV(0.5), bounds.SMILE(3.0),
                                   bounds.InfoNCE(), bounds.JS()])
def test_config_round_trip(bound):
    assert bounds.resolve_bound(bound.config()) == bound


def test_infonce_refuses_shuffled_pairs():
    with pytest.raises(ValueError, match="every pair"):
        im.BOUNDS["infonce"](torch.randn(4), torch.randn(4))
    mi = im.MutualInfoChain.from_sizes(3, 2, [4], [torch.relu])
    x, z = torch.randn(6, 3), torch.randn(6, 2)
    with pytest.raises(ValueError, match="every pair"):
        paired_mutual_info(mi, x, z, torch.arange(6), bound="infonce")


def test_bad_scores_named():
    with pytest.raises(ValueError, match="negatives must be a non-empty 1-D"):
        im.BOUNDS["dv"](torch.randn(4), torch.randn(2, 2))
    with pytest.raises(ValueError, match=r"\(N, N\) matrix"):
        im.BOUNDS["dv"].from_matrix(torch.randn(3, 4))


# ------------------------------------------------------------------------------ through the API


def _chain(seed=0):
    torch.manual_seed(seed)
    return im.MutualInfoChain.from_sizes(5, 3, [8, 6], [torch.relu, torch.tanh]).double()


@pytest.mark.parametrize("name", [n for n, b in im.BOUNDS.items() if not b.needs_all_pairs])
@pytest.mark.parametrize("path", ["auto", "fused", "two_call", "reference"])
def test_bound_on_shuffled_pairs_every_path(name, path):
    mi = _chain()
    x = torch.randn(12, 5, dtype=torch.float64)
    z = torch.randn(12, 3, dtype=torch.float64, requires_grad=True)
    perm = im.latent_permutation(12, 1, 7)
    with im.use_path(path):
        got = paired_mutual_info(mi, x, z, perm, shuffled_grad=True, bound=name)
    joint, shuffled = mi(x, z), mi(x, z[perm])
    b = bounds.resolve_bound(name)
    want = b(joint, shuffled)
    assert torch.allclose(got.bound, want, rtol=1e-12, atol=1e-12)
    params = [z, *mi.parameters()]
    g_got = torch.autograd.grad(got.bound, params)
    g_want = torch.autograd.grad(want, params)
    for a, c in zip(g_got, g_want):
        assert torch.allclose(a, c, rtol=1e-10, atol=1e-12)


def test_default_bound_unchanged():
    mi = im.MutualInfoChain.from_sizes(5, 3, [8], [torch.relu])
    x, z = torch.randn(16, 5), torch.randn(16, 3)
    default = im.variational_mutual_info(mi, x, z, seed=3)
    assert torch.equal(im.variational_mutual_info(mi, x, z, seed=3, bound="nwj"), default)
    perm = im.latent_permutation(16, 1, 3)
    assert torch.allclose(default, im.nwj_bound(mi(x, z), mi(x, z[perm])), rtol=1e-5, atol=1e-6)
    with im.use_path("two_call"):
        assert torch.equal(im.variational_mutual_info(mi, x, z, seed=3, bound="nwj"),
                           im.nwj_bound(mi(x, z), mi(x, z[perm])))


@pytest.mark.parametrize("name", NAMES)
def test_losses_take_the_bound(name):
    vae, mi = _small_model()
    x = torch.rand(10, 6)
    kwargs = {"negatives": "all"} if name == "infonce" else {}
    torch.manual_seed(1)
    loss = im.miloss(vae, mi, x, seed=2, bound=name, **kwargs)
    torch.manual_seed(1)
    with torch.no_grad():
        z = vae.sample_latent(vae.encoder(x))
    want = im.variational_mutual_info(mi, x, z, seed=2, bound=name, **kwargs)
    assert torch.allclose(loss, -want, rtol=1e-6, atol=1e-6)
    torch.manual_seed(1)
    im.infomaxloss(vae, mi, x, seed=2, bound=name, **kwargs).backward()
    assert all(p.grad is not None for p in vae.parameters())


def _small_model():
    torch.manual_seed(0)
    model = _model_from_config("nwj")
    return model.vae, model.mi


def _model_from_config(bound):
    enc = im.JointGaussianLogEncoder.from_sizes(6, 2, [8], [torch.relu])
    dec = im.BernoulliDecoder.from_sizes(6, 2, [8], [torch.relu])
    mi = im.MutualInfoChain.from_sizes(6, 2, [8], [torch.relu])
    return im.InfoMaxVAE(im.VAE(enc, dec), mi, bound=bound)


def test_infomaxvae_saves_its_bound(tmp_path):
    model = _model_from_config(bounds.SMILE(clip=3.0))
    assert model.config["bound"] == {"name": "smile", "clip": 3.0}
    model.save(tmp_path / "m")
    loaded = im.InfoMaxVAE.load(tmp_path / "m")
    assert loaded.bound == bounds.SMILE(clip=3.0)
    assert "bound" not in _model_from_config("nwj").config  # nwj: the config is as before


def test_infomaxvae_bad_bound_in_config(tmp_path):
    model = _model_from_config("dv")
    config = dict(model.config, bound={"name": "tuba"})
    with pytest.raises(im.serialization.SerializationError, match="tuba"):
        im.InfoMaxVAE.from_config(config)


def test_train_step_passes_the_bound(monkeypatch):
    model = _model_from_config("dv")
    seen = []
    real = im.mutual_info.shuffled_bound

    def spy(*args, **kwargs):
        seen.append(kwargs.get("bound"))
        return real(*args, **kwargs)

    monkeypatch.setattr(im.infomax, "shuffled_bound", spy)
    opt = {"vae": torch.optim.SGD(model.vae.parameters(), 1e-3),
           "mi": torch.optim.SGD(model.mi.parameters(), 1e-3)}
    im.train_step(model, torch.rand(8, 6), opt)
    assert [bounds.resolve_bound(b).name for b in seen] == ["dv", "dv"]
    seen.clear()
    im.train_step(model, torch.rand(8, 6), opt, bound="js")
    assert [bounds.resolve_bound(b).name for b in seen] == ["js", "js"]
    with pytest.raises(ValueError, match="contradicts"):
        im.train_step(model, torch.rand(8, 6), opt, bound="js", miloss_kwargs={"bound": "nwj"})


# ------------------------------------------------------------------------------ torch-mist


def _torch_mist():
    try:
        from torch_mist.critic import Critic
        from torch_mist.estimators.discriminative import implementations
    except Exception as exc:  # not installed, or a dependency of it missing
        pytest.skip(f"torch-mist 0.2.17 not importable: {exc}")
    return Critic, implementations


def _lookup_critic(Critic, table):
    """A torch-mist critic whose score on (x, y) is ``table[x, y]`` (x, y carry row indices)."""

    class Lookup(Critic):
        def forward(self, x, y):
            return table[x[..., 0].long(), y[..., 0].long()]

    return Lookup()


def _mist_case(name, n):
    """torch-mist's estimator for ``name`` with the negatives our bound uses on all pairs:
    neg_samples=-1 (the N - 1 codes j != i, each once) or, for InfoNCE, 0 (all N codes)."""
    Critic, impl = _torch_mist()
    s = _scores(n, seed=3)
    critic = _lookup_critic(Critic, s)
    estimators = {"nwj": lambda: impl.NWJ(critic, neg_samples=-1),
                  "dv": lambda: impl.MINE(critic, neg_samples=-1),
                  "js": lambda: impl.JS(critic, neg_samples=-1),
                  "smile": lambda: impl.SMILE(critic, neg_samples=-1, tau=5.0),
                  "infonce": lambda: impl.InfoNCE(critic, neg_samples=0)}
    if name not in estimators:
        pytest.skip(f"torch-mist has no estimator defined as bound {name!r} is")
    make = estimators[name]
    index = torch.arange(n, dtype=torch.float64).unsqueeze(1)
    return s, make, index


@pytest.mark.parametrize("name", NAMES)
def test_value_equals_torch_mist(name):
    s, make, index = _mist_case(name, 6)
    want = make().mutual_information(index, index)
    got = im.BOUNDS[name].from_matrix(s)
    assert torch.allclose(got, want.to(got.dtype), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("name", ["nwj", "js", "smile", "infonce"])
def test_gradient_equals_torch_mist(name):
    """torch-mist trains on ``loss`` = -(training objective); JS and SMILE on the JS bound."""
    s, make, index = _mist_case(name, 6)
    want, = torch.autograd.grad(-make().loss(index, index), s)
    got, = torch.autograd.grad(im.BOUNDS[name].from_matrix(s), s)
    assert torch.allclose(got, want, rtol=1e-6, atol=1e-8)


def test_dv_moving_average_equals_mine():
    """MINE's loss with its exponential moving average, over three batches."""
    n = 6
    Critic, impl = _torch_mist()
    table = torch.zeros(n, n, dtype=torch.float64, requires_grad=True)
    ours = bounds.DV(moving_average=0.9)
    index = torch.arange(n, dtype=torch.float64).unsqueeze(1)
    average = None
    for seed in range(3):
        with torch.no_grad():
            table.copy_(_scores(n, seed=seed))
        # A fresh estimator per batch (torch-mist caches the critic's output per input), with
        # the moving average carried over.
        mine = impl.MINE(_lookup_critic(Critic, table), neg_samples=-1, gamma=0.9)
        if average is not None:
            mine._train_baseline = average
        average = mine._train_baseline
        want, = torch.autograd.grad(-mine.loss(index, index), table)
        got, = torch.autograd.grad(ours.from_matrix(table), table)
        assert torch.allclose(got, want, rtol=1e-6, atol=1e-8)


# ------------------------------------------------------------------------------ command line


def test_train_command_records_the_bound_and_resume_keeps_it(tmp_path, capsys, one_thread):
    import json

    from infomax_ext.cli import main

    out = tmp_path / "run"
    tiny = ["--latent-dim", "2", "--encoder-neurons", "8", "--decoder-neurons", "8",
            "--mi-neurons", "8", "--eval-mi-steps", "2", "--batch-size", "256", "--quiet",
            "--no-plots"]
    assert main(["train", "--out", str(out), "--epochs", "1", "--bound", "smile",
                 "--smile-clip", "3", *tiny]) == 0
    train = json.loads((out / "config.json").read_text())["train"]
    assert train["bound"] == "smile" and train["smile_clip"] == 3.0
    assert im.InfoMaxVAE.load(out / "model").bound == bounds.SMILE(clip=3.0)
    capsys.readouterr()
    with pytest.raises(SystemExit):
        main(["train", "--resume", "--out", str(out), "--epochs", "2", "--bound", "dv", "--quiet"])
    assert "--bound dv differs from the value the run was started with (smile)" in \
        capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["train", "--out", str(tmp_path / "bad"), "--smile-clip", "0", "--quiet"])
    assert "smile_clip must be a positive finite number" in capsys.readouterr().err


# ------------------------------------------------------------------------------ loss modules


@pytest.mark.parametrize("name", NAMES)
def test_loss_modules_take_the_bound(name):
    vae, mi = _small_model()
    x = torch.rand(10, 6)
    z = torch.randn(10, 2)
    negatives = "all" if name == "infonce" else "shuffle"
    loss = im.losses.MutualInfoLoss(mi, bound=name, negatives=negatives)
    want = im.variational_mutual_info(mi, x, z, seed=4, bound=name, negatives=negatives)
    assert torch.allclose(loss(x, z, seed=4), -want, rtol=1e-6, atol=1e-6)
    vae_loss = im.losses.InfoMaxVAELoss(mi, bound=name, negatives=negatives)
    torch.manual_seed(3)
    got = vae_loss(vae, x, seed=4)
    torch.manual_seed(3)
    assert torch.allclose(got, im.infomaxloss(vae, mi, x, seed=4, bound=name,
                                              negatives=negatives), rtol=1e-6, atol=1e-6)


def test_loss_modules_check_their_settings():
    mi = _small_model()[1]
    with pytest.raises(ValueError, match="unknown bound"):
        im.losses.MutualInfoLoss(mi, bound="tuba")
    with pytest.raises(ValueError, match="negatives must be one of"):
        im.losses.InfoMaxVAELoss(mi, negatives="some")
    with pytest.raises(ValueError, match="nothing is shuffled"):
        im.losses.MutualInfoLoss(mi, bound="infonce")(torch.rand(4, 6), torch.randn(4, 2),
                                                      torch.randn(4, 2))
