"""train_step's checks and its exactness at the edges: frozen parameters stay put, a replaced
submodule is refused, miloss_kwargs are checked before any step (and refused where
reuse_forward cannot honour them), x's dtype and non-finite values are named, reuse_forward's
critic gradient is exact for any alpha. Each refusal: the exact text, no parameter changed."""
import copy
import math

import pytest
import torch

import infomax_ext as im
from infomax_ext.mutual_info import DataHalfCache, latent_permutation
from infomax_ext.training_checks import reuse_gradient_is_exact

F32, F64 = torch.float32, torch.float64
N, DX, DZ = 16, 6, 3
pytestmark = pytest.mark.usefixtures("one_thread")


def model(dtype=F64, seed=0):
    torch.manual_seed(seed)
    enc = im.JointGaussianLogEncoder.from_sizes(DX, DZ, [5], ["tanh"])
    dec = im.BernoulliDecoder.from_sizes(DX, DZ, [5], ["tanh"])
    mi = im.MutualInfoChain.from_sizes(DX, DZ, [7], ["tanh"])
    return im.InfoMaxVAE(im.VAE(enc, dec), mi).to(dtype)


def data(dtype=F64, seed=1):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(N, DX, generator=g, dtype=F64) > 0.5).to(dtype)


def opts(m, make=lambda p: torch.optim.SGD(p, lr=0.1)):
    return {"vae": make(m.vae.parameters()), "mi": make(m.mi.parameters())}


def snapshot(module):
    return [p.detach().clone() for p in module.parameters()]


def unchanged(module, before):
    return all(torch.equal(p, q) for p, q in zip(module.parameters(), before))


# ------------------------------------------------------------------------ 1. frozen parameters

@pytest.mark.parametrize("reuse_forward", [False, True])
@pytest.mark.parametrize("make", [lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9),
                                  lambda p: torch.optim.Adam(p, lr=1e-2)], ids=["sgd", "adam"])
def test_parameters_frozen_after_some_steps_do_not_move(make, reuse_forward):
    m, x = model(), data()
    opt = opts(m, make)
    for _ in range(2):
        im.train_step(m, x, opt, reuse_forward=reuse_forward)
    m.vae.encoder.requires_grad_(False)
    m.mi.data.requires_grad_(False)
    encoder, critic_data = snapshot(m.vae.encoder), snapshot(m.mi.data)
    decoder, critic_mlp = snapshot(m.vae.decoder), snapshot(m.mi.mlp)
    for _ in range(2):
        im.train_step(m, x, opt, reuse_forward=reuse_forward)
    assert unchanged(m.vae.encoder, encoder) and unchanged(m.mi.data, critic_data)
    assert all(p.grad is None for p in [*m.vae.encoder.parameters(), *m.mi.data.parameters()])
    assert not unchanged(m.vae.decoder, decoder) and not unchanged(m.mi.mlp, critic_mlp)


# -------------------------------------------------------------------- 2. a replaced submodule

VAE_REPLACED = ("train_step: opt['vae'] holds 4 of its 10 parameters from no part of this "
                "model, not model.vae; build it over model.vae.parameters()")


def test_a_submodule_replaced_after_a_step_is_refused_as_on_a_first_step():
    m, x = model(), data()
    opt = opts(m)
    im.train_step(m, x, opt)
    im.train_step(m, x, opt)
    m.vae.decoder = im.BernoulliDecoder.from_sizes(DX, DZ, [5], ["tanh"]).double()
    before = copy.deepcopy(m.state_dict())
    with pytest.raises(ValueError) as err:
        im.train_step(m, x, opt)
    assert str(err.value) == VAE_REPLACED
    assert all(torch.equal(v, before[k]) for k, v in m.state_dict().items())

    fresh = model()
    fresh_opt = opts(fresh)
    fresh.vae.decoder = im.BernoulliDecoder.from_sizes(DX, DZ, [5], ["tanh"]).double()
    with pytest.raises(ValueError) as err_fresh:
        im.train_step(fresh, x, fresh_opt)
    assert str(err_fresh.value) == str(err.value)


def test_a_replaced_critic_part_and_a_frozen_optimizer_are_seen_after_good_steps():
    m, x = model(), data()
    opt = opts(m)
    im.train_step(m, x, opt, reuse_forward=True)
    m.mi.mlp = copy.deepcopy(m.mi.mlp)  # the same weights, new parameters
    with pytest.raises(ValueError) as err:
        im.train_step(m, x, opt, reuse_forward=True)
    assert str(err.value) == ("train_step: opt['mi'] holds 4 of its 8 parameters from no part "
                              "of this model, not model.mi; build it over model.mi.parameters()")
    m2 = model()
    opt2 = {"vae": torch.optim.SGD(m2.vae.decoder.parameters(), lr=0.1),
            "mi": torch.optim.SGD(m2.mi.parameters(), lr=0.1)}
    im.train_step(m2, x, opt2)
    m2.vae.decoder.requires_grad_(False)
    with pytest.raises(ValueError) as err2:
        im.train_step(m2, x, opt2)
    assert str(err2.value) == "train_step: opt['vae'] holds no trainable parameter of model.vae"


# -------------------------------------------------------- 6. miloss_kwargs before the first step

@pytest.mark.parametrize("reuse_forward", [False, True])
@pytest.mark.parametrize("kwargs, error, message", [
    ({"reg_strenght": 2.0}, ValueError,
     "train_step: miloss_kwargs['reg_strenght'] is not a keyword of miloss (did you mean "
     "'reg_strength'?); it takes regularization, reg_strength, seed, data_half_cache, "
     "process_group, bound, negatives"),
    ({"bogus": 1}, ValueError,
     "train_step: miloss_kwargs['bogus'] is not a keyword of miloss (did you mean 'bound'?); it "
     "takes regularization, reg_strength, seed, data_half_cache, process_group, bound, "
     "negatives"),
    ({"bound": "nope"}, ValueError,
     "train_step: miloss_kwargs['bound']: unknown bound 'nope'; known: nwj, dv, js, smile, "
     "infonce"),
    ({"negatives": "bad"}, ValueError,
     "train_step: miloss_kwargs['negatives'] must be one of 'shuffle', 'all', got 'bad'"),
    ({"seed": 1.5}, TypeError,
     "train_step: miloss_kwargs['seed'] must be an integer or None, got float (1.5)"),
    ({"regularization": "notcallable"}, TypeError,
     "train_step: miloss_kwargs['regularization'] must be a function of MIScores(joint, "
     "shuffled), got str 'notcallable'"),
    ({"process_group": 3}, TypeError,
     "train_step: miloss_kwargs['process_group'] must be a torch.distributed ProcessGroup or "
     "None, got int (3)"),
    ({"reg_strength": -1.0}, ValueError,
     "train_step: miloss_kwargs['reg_strength'] must be a non-negative finite number, got -1.0"),
])
def test_bad_miloss_kwargs_are_refused_before_any_step(kwargs, error, message, reuse_forward):
    m, x = model(), data()
    before = snapshot(m)
    with pytest.raises(error) as err:
        im.train_step(m, x, opts(m), miloss_kwargs=kwargs, reuse_forward=reuse_forward)
    assert str(err.value) == message
    assert unchanged(m, before) and all(p.grad is None for p in m.parameters())


# ----------------------------------------------------------- 3. what reuse_forward cannot honour

@pytest.mark.parametrize("given, message", [
    (dict(miloss_kwargs={"bound": "js"}),
     "train_step: reuse_forward=True feeds both losses from one forward pass, so "
     "miloss_kwargs['bound']='js' cannot differ from the VAE loss's bound ('nwj'); give it "
     "once, in train_step's bound= or infomaxloss_kwargs"),
    (dict(miloss_kwargs={"negatives": "all"}),
     "train_step: reuse_forward=True feeds both losses from one forward pass, so "
     "miloss_kwargs['negatives']='all' cannot differ from the VAE loss's negatives "
     "('shuffle'); give it once, in train_step's negatives= or infomaxloss_kwargs"),
    (dict(miloss_kwargs={"seed": 3}, infomaxloss_kwargs={"seed": 5}),
     "train_step: reuse_forward=True feeds both losses from one forward pass, so "
     "miloss_kwargs['seed']=3 cannot differ from the VAE loss's seed (5); give it once, in "
     "infomaxloss_kwargs"),
    (dict(miloss_kwargs={"data_half_cache": DataHalfCache()}),
     "train_step: reuse_forward=True does not use miloss_kwargs['data_half_cache'] (the MI "
     "loss reuses the VAE loss's forward pass); remove it"),
])
def test_reuse_forward_refuses_miloss_kwargs_it_cannot_honour(given, message):
    m, x = model(), data()
    before = snapshot(m)
    with pytest.raises(ValueError) as err:
        im.train_step(m, x, opts(m), reuse_forward=True, **given)
    assert str(err.value) == message
    assert unchanged(m, before) and all(p.grad is None for p in m.parameters())


def test_reuse_forward_honours_the_miloss_kwargs_it_takes():
    x = data()

    def reg(scores):
        return (scores.joint ** 2).mean()

    for given, seed in ((dict(miloss_kwargs={"seed": 7}), 7),  # the shared draw's seed
                        (dict(miloss_kwargs={"seed": 7}, infomaxloss_kwargs={"seed": None}), 7),
                        (dict(miloss_kwargs={"seed": 4}, infomaxloss_kwargs={"seed": 4}), 4),
                        (dict(miloss_kwargs={"bound": "js"}, bound="js"), None)):
        m = model()
        torch.manual_seed(3)
        got = im.train_step(m, x, opts(m), reuse_forward=True, loss_return=True, **given)
        ref = model()
        torch.manual_seed(3)
        terms = im.infomax_terms(ref.vae, ref.mi, x, seed=seed, bound=given.get("bound", "nwj"))
        assert got == (terms.loss.item(), -terms.mi.item())
    m = model()
    torch.manual_seed(3)
    got = im.train_step(m, x, opts(m), reuse_forward=True, loss_return=True,
                        miloss_kwargs={"regularization": reg, "reg_strength": 0.5, "seed": 2})
    ref = model()
    torch.manual_seed(3)
    terms = im.infomax_terms(ref.vae, ref.mi, x, seed=2)
    assert got == (terms.loss.item(), (-terms.mi + 0.5 * reg(terms.scores)).item())


# ----------------------------------------------------------- 4. reuse_forward with a tiny alpha

def reference_gradients(m, x, eps, perm, alpha):
    """The float64 gradients of one reuse_forward step written out: the VAE's of
    ``-log p(x|z) + KL - alpha I``, the critic's of ``-I`` (the same z and permutation)."""
    m = copy.deepcopy(m).double()
    x, eps = x.double(), eps.double()
    mu, logsigma = m.vae.encoder(x)
    z = mu + eps * logsigma.exp()
    p = m.vae.decoder(z)[0]
    loglik = (x * p.log() + (1 - x) * (1 - p).log()).sum(1).mean()
    kl = (0.5 * (torch.exp(2 * logsigma) + mu ** 2 - 1 - 2 * logsigma).sum(1)).mean()
    mi = m.mi(x, z).mean() - torch.exp(m.mi(x, z[perm].detach()) - 1).mean()
    vae = torch.autograd.grad(-loglik + kl - alpha * mi, list(m.vae.parameters()),
                              retain_graph=True)
    critic = torch.autograd.grad(-mi, list(m.mi.parameters()))
    return list(vae), list(critic)


@pytest.mark.parametrize("dtype, alpha", [
    (F32, 1.0), (F32, 2e-19), (F32, 1e-30), (F32, 1e-40), (F32, 1e-46),
    (F64, 1e-150), (F64, 1e-300), (F64, 1e-322),
])
def test_reuse_forward_critic_gradient_is_exact_for_any_alpha(dtype, alpha):
    m, x = model(dtype), data(dtype)
    opt = opts(m, lambda p: torch.optim.SGD(p, lr=0.0))  # .grad is this step's, m unchanged
    torch.manual_seed(123)
    im.train_step(m, x, opt, reuse_forward=True, infomaxloss_kwargs={"alpha": alpha, "seed": 5})
    torch.manual_seed(123)
    eps = torch.randn(N, DZ, dtype=dtype)  # the draw of reparameterize
    want_vae, want_mi = reference_gradients(m, x, eps, latent_permutation(N, 1, 5), alpha)
    rtol, atol = (1e-4, 1e-6) if dtype == F32 else (1e-10, 1e-13)
    for p, want in zip([*m.vae.parameters(), *m.mi.parameters()], want_vae + want_mi):
        assert p.grad is not None and p.grad.dtype == dtype
        torch.testing.assert_close(p.grad.double(), want, rtol=rtol, atol=atol)


def test_the_division_threshold_on_both_sides():
    for dtype in (torch.float16, torch.bfloat16, F32, F64):
        low = math.sqrt(torch.finfo(dtype).tiny)
        assert reuse_gradient_is_exact(low, [dtype]) and reuse_gradient_is_exact(1 / low, [dtype])
        assert not reuse_gradient_is_exact(math.nextafter(low, 0), [dtype])
        assert not reuse_gradient_is_exact(math.nextafter(1 / low, math.inf), [dtype])
    assert not reuse_gradient_is_exact(0.0, [F32]) and reuse_gradient_is_exact(10.0, [F32])
    assert reuse_gradient_is_exact(1e-3, [F32]) and not reuse_gradient_is_exact(1e-3,
                                                                             [F32, torch.float16])


# ------------------------------------------------------------------- 7. x's dtype and NaN/inf

@pytest.mark.parametrize("x_dtype, message", [
    (F64, "train_step: x has dtype torch.float64 but the model's parameters are torch.float32; "
          "convert the batch (x.to(torch.float32)) or the model (model.to(torch.float64))"),
    (torch.bfloat16, "train_step: x has dtype torch.bfloat16 but the model's parameters are "
                     "torch.float32; convert the batch (x.to(torch.float32)) or the model "
                     "(model.to(torch.bfloat16))"),
])
def test_an_x_of_another_dtype_is_named_before_any_work(x_dtype, message):
    m = model(F32)
    before = snapshot(m)
    for reuse_forward in (False, True):
        with pytest.raises(TypeError) as err:
            im.train_step(m, data(x_dtype), opts(m), reuse_forward=reuse_forward)
        assert str(err.value) == message
    assert unchanged(m, before) and all(p.grad is None for p in m.parameters())


def test_an_integer_x_is_left_to_the_model():
    """Token ids for an embedding, or any input the model casts itself: never refused for its
    dtype (a plain MLP names the mismatch itself, as torch does)."""
    from infomax_ext.training_checks import check_x_dtype

    for dtype in (torch.int64, torch.int32, torch.bool, torch.uint8):
        check_x_dtype(torch.zeros(4, 3, dtype=dtype), {F32})  # no error
    with pytest.raises(TypeError, match="x has dtype torch.float64"):
        check_x_dtype(torch.zeros(4, 3, dtype=F64), {F32})


@pytest.mark.parametrize("reuse_forward", [False, True])
@pytest.mark.parametrize("value", [math.nan, math.inf])
def test_a_non_finite_x_is_refused_before_any_step(value, reuse_forward):
    m, x = model(), data()
    x[3, 2] = value
    before = snapshot(m)
    with pytest.raises(ValueError) as err:
        im.train_step(m, x, opts(m, lambda p: torch.optim.Adam(p, 1e-2)),
                      reuse_forward=reuse_forward)
    assert str(err.value) == ("train_step: the VAE loss is nan: x holds 1 non-finite values "
                              "(NaN or inf) of its 96, so the step is refused (no parameter "
                              "changed)")
    assert unchanged(m, before)


def test_a_non_finite_mi_loss_after_the_vae_step_says_what_stepped():
    m, x = model(), data()
    x[0, 0] = math.nan
    vae_before, mi_before = snapshot(m.vae), snapshot(m.mi)

    def vae_loss_of_clean_x(vae, mi, x, **kwargs):
        return im.infomaxloss(vae, mi, torch.nan_to_num(x), **kwargs)

    with pytest.raises(ValueError) as err:
        im.train_step(m, x, opts(m), infomaxloss_function=vae_loss_of_clean_x)
    assert str(err.value) == ("train_step: the MI loss (after the VAE's step) is nan: x holds 1 "
                              "non-finite values (NaN or inf) of its 96, so the step is refused "
                              "(model.vae has taken this step's update, model.mi is unchanged)")
    assert not unchanged(m.vae, vae_before) and unchanged(m.mi, mi_before)


def test_the_losses_returned_are_the_values_checked():
    m, x = model(), data()
    torch.manual_seed(4)
    got = im.train_step(m, x, opts(m), loss_return=True, infomaxloss_kwargs={"seed": 1},
                        miloss_kwargs={"seed": 2})
    ref = model()
    torch.manual_seed(4)
    vae_loss = im.infomaxloss(ref.vae, ref.mi, x, seed=1)
    assert got[0] == vae_loss.item() and math.isfinite(got[1])
