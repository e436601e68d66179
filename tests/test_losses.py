"""The loss modules against the functional forms and a float64 reference written out here."""
import math

import pytest
import torch

import infomax_ext as im
from infomax_ext import InfoMaxVAELoss, MutualInfoChain, MutualInfoLoss
from infomax_ext.mutual_info import MIScores, latent_permutation, shuffled_bound
from infomax_ext.vae import VAE, BernoulliDecoder, JointGaussianLogEncoder

F64 = torch.float64
pytestmark = pytest.mark.usefixtures("one_thread")


def chain(dtype=torch.float32, n_in=6, d=3):
    torch.manual_seed(1)
    return MutualInfoChain.from_sizes(n_in, d, [16, 8], ["relu", "tanh"]).to(dtype)


def vae(dtype=torch.float32, n_in=6, d=3):
    torch.manual_seed(2)
    return VAE(JointGaussianLogEncoder.from_sizes(n_in, d, [12], ["relu"]),
               BernoulliDecoder.from_sizes(n_in, d, [12], ["relu"])).to(dtype)


def nwj_reference(critic, x, z, z_shuffle):
    """``mean T(x, z) - mean exp(T(x, z') - 1)`` from the critic's own forward, in float64."""
    joint = critic(x, z).reshape(-1)
    shuffled = critic(x, z_shuffle).reshape(-1)
    return joint.mean() - torch.exp(shuffled - 1).mean()


def val(t) -> float:
    return float(t.detach())


def test_exported_from_the_package():
    assert im.MutualInfoLoss is MutualInfoLoss and im.InfoMaxVAELoss is InfoMaxVAELoss
    assert "MutualInfoLoss" in im.__all__ and "InfoMaxVAELoss" in im.__all__


def test_mutual_info_loss_is_the_negative_nwj_bound_in_float64():
    critic = chain(F64)
    x, z = torch.rand(10, 6, dtype=F64), torch.randn(10, 3, dtype=F64)
    z_shuffle = z[torch.randperm(10)]
    loss = MutualInfoLoss(critic)(x, z, z_shuffle)
    want = -nwj_reference(critic, x, z, z_shuffle)
    assert loss.dim() == 0 and loss.dtype == F64
    assert abs(val(loss) - val(want)) <= 1e-12 * (1 + abs(val(want)))
    # the internal shuffle is latent_permutation(N, 1, seed)
    perm = latent_permutation(10, 1, 123, z.device)
    got = MutualInfoLoss(critic)(x, z, seed=123)
    assert abs(val(got) + val(nwj_reference(critic, x, z, z[perm]))) <= 1e-12 * (1 + abs(val(got)))


@pytest.mark.parametrize("shuffled_grad", [False, True])
def test_mutual_info_loss_equals_the_functional_form_value_and_gradients(shuffled_grad):
    critic = chain()
    x = torch.rand(12, 6)
    z = torch.randn(12, 3, requires_grad=True)
    loss = MutualInfoLoss(critic, shuffled_grad=shuffled_grad)(x, z, seed=5)
    grads = torch.autograd.grad(loss, [z, *critic.parameters()])
    want = -im.variational_mutual_info(critic, x, z, seed=5, shuffled_grad=shuffled_grad)
    want_grads = torch.autograd.grad(want, [z, *critic.parameters()])
    assert torch.equal(loss, want)
    assert all(torch.equal(a, b) for a, b in zip(grads, want_grads))


def test_mutual_info_loss_with_several_codes_per_sample_and_a_regularization():
    critic = chain()
    x, z = torch.rand(8, 6), torch.randn(3 * 8, 3)

    def reg(scores: MIScores):
        return (scores.joint ** 2).mean()

    loss = MutualInfoLoss(critic, regularization=reg, reg_strength=0.5)(x, z, seed=9)
    paired = shuffled_bound(critic, x, z, 3, 9)
    assert torch.equal(loss, -paired.bound + 0.5 * (paired.joint ** 2).mean())


def test_the_critic_is_a_submodule():
    critic = chain()
    loss = MutualInfoLoss(critic)
    assert list(loss.parameters()) == list(critic.parameters())
    assert set(loss.state_dict()) == {f"critic.{k}" for k in critic.state_dict()}
    loss.to(F64)
    assert next(critic.parameters()).dtype == F64


@pytest.mark.parametrize("make, message", [
    (lambda: MutualInfoLoss(lambda x, z: x), "critic must be an nn.Module"),
    (lambda: MutualInfoLoss(chain(), shuffled_grad=1), "shuffled_grad must be True or False"),
    (lambda: MutualInfoLoss(chain(), reg_strength=math.inf), "reg_strength must be a non-negative finite"),
    (lambda: MutualInfoLoss(chain(), reg_strength=-1.0), "reg_strength must be a non-negative finite"),
    (lambda: InfoMaxVAELoss(chain(), beta=float("nan")), "beta must be a non-negative finite number"),
    (lambda: InfoMaxVAELoss(chain(), alpha="5"), "alpha must be a non-negative finite number"),
    (lambda: InfoMaxVAELoss(chain(), n_samples=0), "n_samples must be a positive integer"),
])
def test_bad_settings_are_refused(make, message):
    with pytest.raises((TypeError, ValueError), match=message):
        make()


def test_bad_shapes_are_refused():
    loss = MutualInfoLoss(chain())
    with pytest.raises(ValueError, match=r"z must be \(N, d\) or \(S N, d\) for x of N = 4 rows"):
        loss(torch.rand(4, 6), torch.randn(5, 3))
    with pytest.raises(ValueError, match="z_shuffle has shape"):
        loss(torch.rand(4, 6), torch.randn(4, 3), torch.randn(3, 3))
    with pytest.raises(ValueError, match="nothing is shuffled"):
        loss(torch.rand(4, 6), torch.randn(4, 3), torch.randn(4, 3), seed=1)


def test_infomax_vae_loss_against_a_float64_reference():
    model, critic = vae(F64), chain(F64)
    x = torch.rand(9, 6, dtype=F64)
    beta, alpha = 2.0, 3.5
    torch.manual_seed(7)
    loss = InfoMaxVAELoss(critic, beta=beta, alpha=alpha)(model, x, seed=11)

    torch.manual_seed(7)
    mu, logsigma = model.encoder(x)
    z = mu + torch.randn_like(mu) * torch.exp(logsigma)
    p = model.decoder(z).p
    loglik = (x * torch.log(p) + (1 - x) * torch.log(1 - p)).sum(1).mean()
    kl = (0.5 * (torch.exp(2 * logsigma) + mu ** 2 - 1 - 2 * logsigma).sum(1)).mean()
    perm = latent_permutation(9, 1, 11, z.device)
    mi = nwj_reference(critic, x, z, z[perm])
    want = -loglik + beta * kl - alpha * mi
    assert abs(val(loss) - val(want)) <= 1e-11 * (abs(val(loglik)) + beta * val(kl)
                                                      + alpha * abs(val(mi)))


def test_infomax_vae_loss_equals_infomaxloss_value_gradients_and_terms():
    model, critic = vae(), chain()
    x = torch.rand(10, 6)
    module = InfoMaxVAELoss(critic, beta=0.5, alpha=4.0, n_samples=2, shuffled_grad=True)
    params = [*model.parameters(), *critic.parameters()]
    torch.manual_seed(3)
    loss = module(model, x, seed=4)
    grads = torch.autograd.grad(loss, params)
    torch.manual_seed(3)
    want = im.infomaxloss(model, critic, x, beta=0.5, alpha=4.0, n_samples=2, seed=4,
                          shuffled_grad=True)
    want_grads = torch.autograd.grad(want, params)
    assert torch.equal(loss, want)
    assert all(torch.equal(a, b) for a, b in zip(grads, want_grads))
    torch.manual_seed(3)
    terms = module.terms(model, x, seed=4)
    assert torch.equal(terms.loss, want)
    assert torch.equal(terms.loss, -terms.loglikelihood + 0.5 * terms.kl - 4.0 * terms.mi)
    assert "beta=0.5, alpha=4, n_samples=2, shuffled_grad=True" in repr(module)


def test_the_two_step_pattern_trains_the_critic_on_detached_codes():
    """The encoder's step uses InfoMaxVAELoss; the critic's step MutualInfoLoss on z.detach():
    the critic's loss leaves the VAE without gradient, and its value is miloss's."""
    model, critic = vae(), chain()
    x = torch.rand(10, 6)
    critic_loss = MutualInfoLoss(critic)
    torch.manual_seed(5)
    with torch.no_grad():
        z = model.sample_latent(model.encoder(x))
    value = critic_loss(x, z.detach(), seed=6)
    value.backward()
    assert all(p.grad is None for p in model.parameters())
    assert all(p.grad is not None for p in critic.parameters())
    torch.manual_seed(5)
    assert torch.equal(value.detach(), im.miloss(model, critic, x, seed=6).detach())


def test_infomax_vae_loss_reads_the_dv_average_and_the_critic_loss_updates_it():
    """One DV bound with a moving average shared by both modules: the critic's loss takes in
    one batch per step, the VAE's loss reads that average (value and gradient), as infomaxloss
    does; the critic's gradient is MINE's ``mean T_j - mean exp(T_m) / average``, in float64."""
    from infomax_ext.bounds import resolve_bound

    model, critic = vae(F64), chain(F64)
    x = torch.rand(10, 6, dtype=F64)
    dv = resolve_bound("dv", moving_average=0.9)
    vae_loss = InfoMaxVAELoss(critic, alpha=3.0, bound=dv)
    critic_loss = MutualInfoLoss(critic, bound=dv)
    torch.manual_seed(5)
    with torch.no_grad():
        z = model.sample_latent(model.encoder(x))
    critic_loss(x, z, seed=6).backward()
    assert dv.average_updates == 1
    average = dv.ema.clone()
    critic_params = list(critic.parameters())
    torch.manual_seed(7)
    loss = vae_loss(model, x, seed=8)
    grads = torch.autograd.grad(loss, critic_params)
    assert dv.average_updates == 1 and torch.equal(dv.ema, average)
    torch.manual_seed(7)
    vae_loss.terms(model, x, seed=8)
    assert dv.average_updates == 1 and torch.equal(dv.ema, average)

    torch.manual_seed(7)
    want = im.infomaxloss(model, critic, x, alpha=3.0, seed=8, bound=dv)
    assert torch.equal(loss, want)
    torch.manual_seed(7)
    mu, logsigma = model.encoder(x)
    z = mu + torch.randn_like(mu) * torch.exp(logsigma)
    perm = latent_permutation(10, 1, 8, z.device)
    joint, negatives = critic(x, z), critic(x, z[perm].detach())
    mine = joint.mean() - torch.exp(negatives).mean() / average
    for got, w in zip(grads, torch.autograd.grad(-3.0 * mine, critic_params)):
        torch.testing.assert_close(got, w, rtol=1e-10, atol=1e-13)


@pytest.mark.parametrize("make, error, message", [
    (lambda: MutualInfoLoss(chain(), regularization="joint"), TypeError,
     "regularization must be a function of MIScores(joint, shuffled), got str 'joint'"),
    (lambda: MutualInfoLoss(chain(), process_group=3), TypeError,
     "process_group must be a torch.distributed ProcessGroup or None, got int (3)"),
    (lambda: InfoMaxVAELoss(chain(), process_group="world"), TypeError,
     "process_group must be a torch.distributed ProcessGroup or None, got str ('world')"),
    (lambda: MutualInfoLoss(chain(), negatives="every"), ValueError,
     "negatives must be one of 'shuffle', 'all', got 'every'"),
    (lambda: MutualInfoLoss(chain(), bound="tuba"), ValueError,
     "unknown bound 'tuba'; known: nwj, dv, js, smile, infonce"),
])
def test_the_modules_check_their_mi_settings_as_train_step_does(make, error, message):
    # the one check of the MI loss's settings (losses.mi_loss_settings), train_step's too
    with pytest.raises(error) as err:
        make()
    assert str(err.value) == message
