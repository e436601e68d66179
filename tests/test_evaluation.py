"""infomax_ext.evaluation: active units, probe, MI of a fresh chain, reconstruction and KL."""
import pytest
import torch

from infomax_ext import (
    VAE,
    BernoulliDecoder,
    JointGaussianLogEncoder,
    decoder_loglikelihood,
    encoder_kl,
)
from infomax_ext.evaluation import (
    active_units,
    encoder_mean,
    evaluate,
    heldout_mutual_info,
    probe_accuracy,
    reconstruction_and_kl,
)


pytestmark = pytest.mark.usefixtures("one_thread")


KEYS = {"mi", "active_units", "probe_accuracy", "recon_loglik", "kl", "elbo", "latent_dim",
        "active_unit_threshold", "latent_variances", "n_train", "n_test"}


def vae(size=6, d=2, seed=0):
    torch.manual_seed(seed)
    return VAE(JointGaussianLogEncoder.from_sizes(size, d, [], []),
               BernoulliDecoder.from_sizes(size, d, [8], [torch.relu]))


def collapsed(v):
    """q(z | x) = N(0, I) for every x: the codes carry no information."""
    with torch.no_grad():
        for head in (v.encoder.mu, v.encoder.logsigma):
            head[0].weight.zero_()
            head[0].bias.zero_()
    return v


def informative(v):
    """q(z | x) = N(3 * W x, 0.01^2): codes nearly a deterministic function of x."""
    with torch.no_grad():
        v.encoder.mu[0].weight.mul_(3.0)
        v.encoder.logsigma[0].weight.zero_()
        v.encoder.logsigma[0].bias.fill_(-4.6)
    return v


def test_active_units_counts_variance_above_threshold():
    g = torch.Generator().manual_seed(0)
    mu = torch.randn(500, 4, generator=g) * torch.tensor([1.0, 0.5, 0.05, 0.0])
    count, variances = active_units(mu)  # variances about 1, 0.25, 0.0025, 0
    assert count == 2 and len(variances) == 4
    assert variances[0] == pytest.approx(mu[:, 0].var(unbiased=False).item(), rel=1e-6)
    assert active_units(mu, threshold=0.001)[0] == 3
    with pytest.raises(ValueError, match=r"\(N, d\)"):
        active_units(mu[0])


def test_probe_accuracy():
    g = torch.Generator().manual_seed(0)
    y = torch.arange(200) % 2
    mu = torch.randn(200, 2, generator=g) * 0.1 + y[:, None] * 3.0
    assert probe_accuracy(mu[:150], y[:150], mu[150:], y[150:]) == 1.0
    assert probe_accuracy(mu[:150], torch.zeros(150, dtype=torch.long), mu[150:], y[150:]) is None
    for seed in (2**32, 2**63 - 1):  # beyond scikit-learn's 32-bit seeds
        assert probe_accuracy(mu[:150], y[:150], mu[150:], y[150:], seed=seed) == 1.0


def test_reconstruction_and_kl_are_the_library_means():
    v = vae()
    x = torch.rand(10, 6)
    torch.manual_seed(5)
    got = reconstruction_and_kl(v, x)
    torch.manual_seed(5)
    out = v(x, latent=True)
    want_loglik = decoder_loglikelihood(x, out.z, v.decoder, out.decoder).mean().item()
    want_kl = encoder_kl(v.encoder, out.encoder).mean().item()
    assert got == pytest.approx((want_loglik, want_kl), rel=1e-5)


def test_mi_of_a_fresh_chain_separates_informative_from_collapsed_codes():
    g = torch.Generator().manual_seed(1)
    x_train, x_test = torch.rand(256, 6, generator=g), torch.rand(128, 6, generator=g)
    kwargs = dict(mi_neurons=[32], steps=150, batch_size=128, lr=3e-3, seed=0, n_eval=4)
    none = heldout_mutual_info(collapsed(vae()), x_train, x_test, **kwargs)
    high = heldout_mutual_info(informative(vae()), x_train, x_test, **kwargs)
    assert abs(none) < 0.1
    assert high > 0.5
    state = torch.get_rng_state()
    again = heldout_mutual_info(informative(vae()), x_train, x_test, **kwargs)
    assert again == high  # seeded
    assert torch.equal(state, torch.get_rng_state())  # global RNG untouched


def test_evaluate_reports_every_metric_without_touching_the_rng():
    v = informative(vae(d=3))
    g = torch.Generator().manual_seed(2)
    x_train, x_test = torch.rand(60, 6, generator=g), torch.rand(30, 6, generator=g)
    y_train, y_test = (x_train[:, 0] > 0.5).long(), (x_test[:, 0] > 0.5).long()
    state = torch.get_rng_state()
    metrics = evaluate(v, x_train, x_test, y_train, y_test, mi_steps=5, mi_neurons=[8])
    assert torch.equal(state, torch.get_rng_state())
    assert set(metrics) == KEYS
    assert metrics["active_units"] == 3 and metrics["latent_dim"] == 3
    assert metrics["elbo"] == pytest.approx(metrics["recon_loglik"] - metrics["kl"])
    assert 0.0 <= metrics["probe_accuracy"] <= 1.0
    assert metrics["n_train"] == 60 and metrics["n_test"] == 30
    assert evaluate(v, x_train, x_test, mi_steps=5, mi_neurons=[8])["probe_accuracy"] is None
    assert encoder_mean(v, x_test).shape == (30, 3)
