"""InfoMaxVAE, infomaxloss, miloss and train_step."""
import pytest
import torch
from torch import nn

import infomax_ext as im


def small_model(n_x=16, n_z=3, seed=0):
    torch.manual_seed(seed)
    enc = im.JointGaussianLogEncoder.from_sizes(n_x, n_z, [24], [torch.relu])
    dec = im.BernoulliDecoder.from_sizes(n_x, n_z, [24], [torch.relu])
    mi = im.MutualInfoChain.from_sizes(n_x, n_z, [24, 12], [torch.relu, torch.relu])
    return im.InfoMaxVAE(im.VAE(enc, dec), mi).double()


def data(n=32, n_x=16):
    return torch.rand(n, n_x, dtype=torch.float64).round()


def grads(loss, params):
    return torch.autograd.grad(loss, params, allow_unused=True)


def test_model_forward_forms():
    model, x = small_model(), data()
    out = model(x)
    assert isinstance(out, im.BernoulliOutput) and out.p.shape == x.shape
    result = model(x, latent=True, seed=1)
    assert isinstance(result, im.InfoMaxVAEOutput)
    assert result.vae.z.shape == (32, 3) and result.mi.dim() == 0


def test_infomaxloss_term_by_term():
    model, x = small_model(), data()
    beta, alpha = 0.7, 2.5
    torch.manual_seed(11)
    loss = im.infomaxloss(model.vae, model.mi, x, beta=beta, alpha=alpha, seed=5)
    torch.manual_seed(11)
    out = model.vae(x, latent=True)
    loglik = im.decoder_loglikelihood(x, out.z, model.vae.decoder, out.decoder).mean()
    kl = im.encoder_kl(model.vae.encoder, out.encoder).mean()
    mi = im.variational_mutual_info(model.mi, x, out.z, im.shuffle_latent(out.z, seed=5))
    torch.testing.assert_close(loss, -loglik + beta * kl - alpha * mi, rtol=1e-12, atol=1e-12)


def test_infomaxloss_with_x_out_and_regularization():
    model, x = small_model(), data()
    x_out = data()
    reg_inputs = []

    def reg(vae_output):
        reg_inputs.append(vae_output)
        return vae_output.z.pow(2).mean()

    torch.manual_seed(2)
    loss = im.infomaxloss(model.vae, model.mi, x, x_out, regularization=reg, reg_strength=0.3, seed=1)
    torch.manual_seed(2)
    base = im.infomaxloss(model.vae, model.mi, x, x_out, seed=1)
    assert isinstance(reg_inputs[0], im.VAEOutput)
    torch.testing.assert_close(loss, base + 0.3 * reg_inputs[0].z.pow(2).mean())
    torch.manual_seed(2)
    out = model.vae(x, latent=True)
    loglik_out = im.decoder_loglikelihood(x_out, out.z, model.vae.decoder, out.decoder).mean()
    loglik_in = im.decoder_loglikelihood(x, out.z, model.vae.decoder, out.decoder).mean()
    torch.manual_seed(2)
    with_x = im.infomaxloss(model.vae, model.mi, x, seed=1)
    torch.testing.assert_close(base - with_x, -(loglik_out - loglik_in), rtol=1e-10, atol=1e-10)


def test_n_samples_averages_the_reconstruction_and_mi_terms():
    model, x = small_model(), data()
    s, beta, alpha = 3, 0.5, 1.5
    torch.manual_seed(7)
    loss = im.infomaxloss(model.vae, model.mi, x, beta=beta, alpha=alpha, n_samples=s, seed=20)
    torch.manual_seed(7)
    enc = model.vae.encoder(x)
    z = im.reparameterize(enc.mu, enc.logsigma, n_samples=s)  # (S, N, d): one draw
    logliks, mis = [], []
    for k in range(s):
        dec = model.vae.decoder(z[k])
        logliks.append(im.decoder_loglikelihood(x, z[k], model.vae.decoder, dec).mean())
        mis.append(im.variational_mutual_info(model.mi, x, z[k], seed=20 + k))
    kl = im.encoder_kl(model.vae.encoder, enc).mean()
    expected = -torch.stack(logliks).mean() + beta * kl - alpha * torch.stack(mis).mean()
    torch.testing.assert_close(loss, expected, rtol=1e-12, atol=1e-12)
    # and it is not the one-sample value
    torch.manual_seed(7)
    assert abs(im.infomaxloss(model.vae, model.mi, x, beta=beta, alpha=alpha, seed=20).item() - loss.item()) > 1e-6


def test_seeds_reproduce_losses():
    model, x = small_model(), data()
    values = []
    for _ in range(2):
        torch.manual_seed(3)
        values.append((im.infomaxloss(model.vae, model.mi, x).item(), im.miloss(model.vae, model.mi, x).item()))
    assert values[0] == values[1]
    torch.manual_seed(3)
    assert im.infomaxloss(model.vae, model.mi, x, seed=1).item() != im.infomaxloss(model.vae, model.mi, x, seed=1).item()


def test_miloss_value_and_regularization():
    model, x = small_model(), data()
    seen = []

    def reg(scores):
        seen.append(scores)
        return scores.joint.pow(2).mean() + scores.shuffled.pow(2).mean()

    torch.manual_seed(4)
    loss = im.miloss(model.vae, model.mi, x, regularization=reg, reg_strength=0.1, seed=9)
    torch.manual_seed(4)
    z = model.vae(x, latent=True).z.detach()
    mi = im.variational_mutual_info(model.mi, x, z, im.shuffle_latent(z, seed=9))
    assert isinstance(seen[0], im.MIScores)
    torch.testing.assert_close(seen[0].joint, model.mi(x, z))
    torch.testing.assert_close(loss, -mi + 0.1 * reg(seen[0]), rtol=1e-12, atol=1e-12)


def test_miloss_gradient_reaches_only_the_mi_chain():
    model, x = small_model(), data()
    loss = im.miloss(model.vae, model.mi, x, seed=1)
    assert all(g is None for g in grads(loss, list(model.vae.parameters())))
    assert all(g is not None for g in grads(loss, list(model.mi.parameters())))


def test_shuffled_grad_modes_in_infomaxloss():
    model, x = small_model(), data()
    enc_params = list(model.vae.encoder.parameters())
    alpha = 2.0
    torch.manual_seed(5)
    g_const = grads(im.infomaxloss(model.vae, model.mi, x, alpha=alpha, seed=3), enc_params)
    torch.manual_seed(5)
    g_flow = grads(im.infomaxloss(model.vae, model.mi, x, alpha=alpha, seed=3, shuffled_grad=True), enc_params)
    # the difference is exactly the gradient of -alpha * (-mean(exp(T(x, z[perm]) - 1))) via z
    torch.manual_seed(5)
    z = model.vae(x, latent=True).z
    perm = im.latent_permutation(32, 1, seed=3)
    extra = grads(alpha * torch.exp(model.mi(x, z[perm]) - 1).mean(), enc_params)
    for a, b, e in zip(g_flow, g_const, extra):
        torch.testing.assert_close(a - b, e, rtol=1e-9, atol=1e-12)
    assert any(float(e.abs().max()) > 1e-8 for e in extra)


def test_train_step_gradients_stay_in_their_network():
    model, x = small_model(), data()
    vae_params, mi_params = list(model.vae.parameters()), list(model.mi.parameters())
    opt = {"vae": torch.optim.SGD(vae_params, lr=0.0), "mi": torch.optim.SGD(mi_params, lr=0.0)}
    state = {}

    def checking_miloss(vae, mi, x, **kw):
        state["mi_grads_after_vae_step"] = [p.grad for p in mi_params]
        state["vae_grads"] = [p.grad.clone() for p in vae_params]
        return im.miloss(vae, mi, x, **kw)

    torch.manual_seed(8)
    im.train_step(model, x, opt, miloss_function=checking_miloss,
                  infomaxloss_kwargs={"seed": 2}, miloss_kwargs={"seed": 3})
    assert all(g is None for g in state["mi_grads_after_vae_step"])
    for p, g in zip(vae_params, state["vae_grads"]):
        assert torch.equal(p.grad, g)  # the MI step left the VAE's .grad alone
    # the gradients are those of the two losses (lr = 0: parameters unchanged)
    torch.manual_seed(8)
    want_vae = grads(im.infomaxloss(model.vae, model.mi, x, seed=2), vae_params)
    want_mi = grads(im.miloss(model.vae, model.mi, x, seed=3), mi_params)
    for p, g in zip(vae_params, want_vae):
        torch.testing.assert_close(p.grad, g)
    for p, g in zip(mi_params, want_mi):
        torch.testing.assert_close(p.grad, g)


def test_train_step_reuse_forward_gradients():
    model, x = small_model(), data()
    vae_params, mi_params = list(model.vae.parameters()), list(model.mi.parameters())
    opt = {"vae": torch.optim.SGD(vae_params, lr=0.0), "mi": torch.optim.SGD(mi_params, lr=0.0)}
    for alpha in (0.5, 0.0):
        torch.manual_seed(1)
        losses = im.train_step(model, x, opt, reuse_forward=True, loss_return=True,
                               infomaxloss_kwargs={"alpha": alpha, "seed": 4})
        torch.manual_seed(1)
        terms = im.infomax_terms(model.vae, model.mi, x, alpha=alpha, seed=4)
        want_vae = torch.autograd.grad(terms.loss, vae_params, retain_graph=True)
        want_mi = grads(-terms.mi, mi_params)
        for p, g in zip(vae_params + mi_params, list(want_vae) + list(want_mi)):
            torch.testing.assert_close(p.grad, g, rtol=1e-9, atol=1e-12)
        assert losses == pytest.approx((terms.loss.item(), -terms.mi.item()))


@pytest.mark.parametrize("reuse_forward", [False, True])
def test_train_step_passes_shuffled_grad_to_the_vae_loss(reuse_forward):
    model, x = small_model(), data()
    vae_params, mi_params = list(model.vae.parameters()), list(model.mi.parameters())
    opt = {"vae": torch.optim.SGD(vae_params, lr=0.0), "mi": torch.optim.SGD(mi_params, lr=0.0)}
    stepped = {}
    for flag in (False, True):
        torch.manual_seed(6)
        im.train_step(model, x, opt, shuffled_grad=flag, reuse_forward=reuse_forward,
                      infomaxloss_kwargs={"alpha": 2.0, "seed": 4}, miloss_kwargs={"seed": 4})
        stepped[flag] = [p.grad.clone() for p in vae_params]
        torch.manual_seed(6)  # lr = 0: the same parameters, the same draw
        want = grads(im.infomaxloss(model.vae, model.mi, x, alpha=2.0, seed=4, shuffled_grad=flag),
                     vae_params)
        for got, w in zip(stepped[flag], want):
            torch.testing.assert_close(got, w, rtol=1e-9, atol=1e-12)
    # the flag matters: the encoder's gradients differ between the two modes
    assert any(float((a - b).abs().max()) > 1e-8 for a, b in zip(stepped[True], stepped[False]))


def test_train_step_shuffled_grad_bad_input():
    model, x = small_model(), data()
    opt = {"vae": torch.optim.SGD(model.vae.parameters(), lr=0.1),
           "mi": torch.optim.SGD(model.mi.parameters(), lr=0.1)}
    with pytest.raises(TypeError, match="shuffled_grad must be True, False or None, got 'yes'"):
        im.train_step(model, x, opt, shuffled_grad="yes")
    with pytest.raises(ValueError, match=r"shuffled_grad=True contradicts infomaxloss_kwargs"):
        im.train_step(model, x, opt, shuffled_grad=True, infomaxloss_kwargs={"shuffled_grad": False})
    assert all(p.grad is None for p in model.parameters())  # refused before any work


@pytest.mark.parametrize("frozen,message", [
    ("vae", "model.vae has no trainable parameters"),
    ("mi", "model.mi has no trainable parameters"),
    ("both", "model.vae and model.mi have no trainable parameters"),
])
def test_train_step_refuses_a_network_with_every_parameter_frozen(frozen, message):
    model, x = small_model(), data()
    opt = {"vae": torch.optim.SGD(model.vae.parameters(), lr=0.1),
           "mi": torch.optim.SGD(model.mi.parameters(), lr=0.1)}
    for name in ("vae", "mi"):
        if frozen in (name, "both"):
            getattr(model, name).requires_grad_(False)
    before = [p.detach().clone() for p in model.parameters()]
    for reuse_forward in (False, True):
        with pytest.raises(ValueError, match=message):
            im.train_step(model, x, opt, reuse_forward=reuse_forward)
    assert all(p.grad is None for p in model.parameters())
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), before))


def test_train_step_accepts_an_object_with_optimizers_and_returns_floats(capsys):
    model, x = small_model(), data()

    class Opt:
        vae = torch.optim.Adam(model.vae.parameters(), 1e-3)
        mi = torch.optim.Adam(model.mi.parameters(), 1e-3)

    out = im.train_step(model, x, Opt(), loss_return=True, verbose=True)
    assert isinstance(out, tuple) and all(isinstance(v, float) for v in out)
    assert "vae_loss" in capsys.readouterr().out
    assert im.train_step(model, x, Opt()) is None


def test_train_step_bad_input():
    model, x = small_model(), data()
    with pytest.raises(TypeError, match="'vae' and an 'mi' optimizer"):
        im.train_step(model, x, torch.optim.SGD(model.parameters(), lr=0.1))
    with pytest.raises(TypeError, match="'vae' and an 'mi' optimizer"):
        im.train_step(model, x, {"vae": torch.optim.SGD(model.vae.parameters(), lr=0.1)})
    opt = {"vae": torch.optim.SGD(model.vae.parameters(), lr=0.1), "mi": torch.optim.SGD(model.mi.parameters(), lr=0.1)}
    with pytest.raises(ValueError, match="at least 2 samples"):
        im.train_step(model, x[:1], opt)
    with pytest.raises(ValueError, match="n_samples"):
        im.infomaxloss(model.vae, model.mi, x, n_samples=0)
    with pytest.raises(ValueError, match="batch sizes differ"):
        im.infomaxloss(model.vae, model.mi, x, x[:5])
    with pytest.raises(ValueError, match="default infomaxloss"):
        im.train_step(model, x, opt, reuse_forward=True, infomaxloss_function=lambda *a, **k: None)


def test_decoder_output_that_does_not_match_the_decoder():
    model, x = small_model(), data()
    wrong = im.GaussianLogOutput(torch.zeros_like(x), torch.zeros_like(x))
    with pytest.raises(TypeError, match="BernoulliDecoder"):
        im.decoder_loglikelihood(x, None, model.vae.decoder, wrong)


@pytest.mark.parametrize("reuse_forward", [False, True])
def test_train_step_decreases_both_losses_on_digits(reuse_forward):
    from sklearn.datasets import load_digits

    digits = torch.tensor(load_digits().data, dtype=torch.float32) / 16.0
    torch.manual_seed(0)
    enc = im.JointGaussianLogEncoder.from_sizes(64, 4, [64], [torch.relu])
    dec = im.BernoulliDecoder.from_sizes(64, 4, [64], [torch.relu])
    mi = im.MutualInfoChain.from_sizes(64, 4, [64, 32], [torch.relu, torch.relu])
    model = im.InfoMaxVAE(im.VAE(enc, dec), mi)
    opt = {"vae": torch.optim.Adam(model.vae.parameters(), 2e-3), "mi": torch.optim.Adam(model.mi.parameters(), 2e-3)}
    history = []
    gen = torch.Generator().manual_seed(0)
    for epoch in range(6):
        order = torch.randperm(len(digits), generator=gen)
        for i in range(0, len(digits) - 127, 128):
            history.append(im.train_step(model, digits[order[i:i + 128]], opt, loss_return=True,
                                         reuse_forward=reuse_forward))
    first = torch.tensor(history[:10]).mean(0)
    last = torch.tensor(history[-10:]).mean(0)
    assert last[0] < first[0] - 5.0  # VAE loss (nats per image) goes down
    assert last[1] < first[1] - 0.2  # MI loss goes down: the MI estimate goes up


def paper_style_model():
    torch.manual_seed(3)
    enc = im.JointGaussianLogEncoder.from_sizes(16, 3, [24], [torch.relu])
    dec = im.BernoulliDecoder.from_sizes(16, 3, [24], [torch.relu])
    mlp = nn.Sequential(nn.Linear(19, 20), nn.ReLU(), nn.Linear(20, 1))
    return im.InfoMaxVAE(im.VAE(enc, dec), im.MutualInfoChain(nn.Identity(), nn.Identity(), mlp)).double()


def alternating_step_written_out(m, x, opt):
    """train_step's alternating step with the public losses and no data-half cache."""
    def step(loss, params, optimizer):
        for p, g in zip(params, torch.autograd.grad(loss, params)):
            p.grad = g
        optimizer.step()

    m.mi.requires_grad_(False)
    vae_loss = im.infomaxloss(m.vae, m.mi, x)
    m.mi.requires_grad_(True)
    step(vae_loss, list(m.vae.parameters()), opt["vae"])
    m.vae.requires_grad_(False)
    mi_loss = im.miloss(m.vae, m.mi, x)
    m.vae.requires_grad_(True)
    step(mi_loss, list(m.mi.parameters()), opt["mi"])
    return float(vae_loss), float(mi_loss)


def run_steps(step, vae_optimizes_mi=False):
    m = paper_style_model()
    vae_params = m.parameters() if vae_optimizes_mi else m.vae.parameters()
    opt = {"vae": torch.optim.Adam(vae_params, lr=1e-2),
           "mi": torch.optim.Adam(m.mi.parameters(), lr=1e-2)}
    torch.manual_seed(5)
    losses = [step(m, opt) for _ in range(3)]
    return losses, [p.detach().clone() for p in m.parameters()]


def assert_same_steps(got, want):
    for a, b in zip(got[0], want[0]):
        assert a == pytest.approx(b, rel=1e-12)
    for p, q in zip(got[1], want[1]):
        torch.testing.assert_close(p, q, rtol=1e-12, atol=1e-12)


def test_train_step_reuses_the_data_half_and_matches_the_step_written_out(data_half_spy):
    # Paper-style chain (data = identity): the VAE step's data half serves the MI step.
    x = data()
    got = run_steps(lambda m, opt: im.train_step(m, x, opt, loss_return=True))
    assert [d is not None for d in data_half_spy] == [True, True, True]
    want = run_steps(lambda m, opt: alternating_step_written_out(m, x, opt))
    assert [d is not None for d in data_half_spy[3:]] == [False, False, False]
    assert_same_steps(got, want)


def test_train_step_refuses_a_vae_optimizer_that_also_moves_the_mi_weights(data_half_spy):
    # A VAE optimizer that also holds the MI chain's parameters would step them with the MI
    # gradients of the step before: refused before any loss is computed, weights unchanged.
    x = data()
    m = paper_style_model()
    opt = {"vae": torch.optim.Adam(m.parameters(), lr=1e-2),
           "mi": torch.optim.Adam(m.mi.parameters(), lr=1e-2)}
    before = {k: v.clone() for k, v in m.state_dict().items()}
    with pytest.raises(ValueError, match=r"opt\['vae'\] holds \d+ of its \d+ parameters from model.mi"):
        im.train_step(m, x, opt)
    assert data_half_spy == []
    for k, v in m.state_dict().items():
        assert torch.equal(v, before[k]), k
