"""infomax_ext.vae: likelihoods against torch.distributions, sampling, builders, configs."""
import json
import math

import pytest
import torch
from torch import nn
from torch.distributions import Bernoulli, Independent, Normal, kl_divergence

from infomax_ext.vae import (
    VAE,
    BernoulliDecoder,
    BernoulliOutput,
    GaussianLogOutput,
    GaussianOutput,
    JointGaussianDecoder,
    JointGaussianEncoder,
    JointGaussianLogDecoder,
    JointGaussianLogEncoder,
    SimpleGaussianDecoder,
    SimpleGaussianOutput,
    SplitGaussianDecoder,
    SplitGaussianLogDecoder,
    VAEOutput,
    decoder_loglikelihood,
    encoder_kl,
    encoder_logposterior,
    module_from_config,
    reparameterize,
    spherical_logprior,
)

F64 = torch.float64
LOG_2PI = math.log(2 * math.pi)

DECODERS = [BernoulliDecoder, SimpleGaussianDecoder, JointGaussianLogDecoder,
            SplitGaussianLogDecoder, JointGaussianDecoder, SplitGaussianDecoder]
ENCODERS = [JointGaussianLogEncoder, JointGaussianEncoder]
OUTPUT_OF = {
    BernoulliDecoder: BernoulliOutput, SimpleGaussianDecoder: SimpleGaussianOutput,
    JointGaussianLogDecoder: GaussianLogOutput, SplitGaussianLogDecoder: GaussianLogOutput,
    JointGaussianDecoder: GaussianOutput, SplitGaussianDecoder: GaussianOutput,
    JointGaussianLogEncoder: GaussianLogOutput, JointGaussianEncoder: GaussianOutput,
}


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def decoder(cls, size=6, n_latent=3):
    return cls.from_sizes(size, n_latent, [5], [torch.relu]).double()


def encoder(cls, size=6, n_latent=3):
    return cls.from_sizes(size, n_latent, [5], [torch.relu]).double()


# ----------------------------------------------------------------------------- log-likelihoods

def test_bernoulli_loglikelihood_matches_torch_distributions():
    g = gen(1)
    x = (torch.rand(7, 2, 3, generator=g) > 0.5).to(F64)
    p = torch.rand(7, 2, 3, generator=g, dtype=F64) * 0.98 + 0.01
    got = decoder_loglikelihood(x, None, BernoulliDecoder(nn.Identity()), BernoulliOutput(p))
    want = Independent(Bernoulli(probs=p), 2).log_prob(x)
    assert got.shape == (7,)
    torch.testing.assert_close(got, want)


def test_bernoulli_loglikelihood_hand_value():
    x = torch.tensor([[1.0, 0.0]], dtype=F64)
    p = torch.tensor([[0.5, 0.25]], dtype=F64)
    got = decoder_loglikelihood(x, None, BernoulliDecoder(nn.Identity()), BernoulliOutput(p))
    torch.testing.assert_close(got, torch.tensor([math.log(0.5) + math.log(0.75)], dtype=F64))


@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_bernoulli_loglikelihood_is_finite_at_p_0_and_1(dtype):
    x = torch.tensor([[1.0, 0.0, 1.0, 0.0]], dtype=dtype)
    p = torch.tensor([[1.0, 0.0, 0.0, 1.0]], dtype=dtype, requires_grad=True)
    ll = decoder_loglikelihood(x, None, BernoulliDecoder(nn.Identity()), BernoulliOutput(p))
    assert torch.isfinite(ll).all()
    eps = torch.finfo(dtype).eps
    # two exact matches (about 0 each), two certain misses (log eps each)
    torch.testing.assert_close(ll, torch.tensor([2 * math.log(eps)], dtype=dtype),
                               rtol=1e-5, atol=1e-5)
    ll.sum().backward()
    assert torch.isfinite(p.grad).all()


def test_simple_gaussian_loglikelihood_matches_normal():
    g = gen(2)
    x, mu = torch.randn(2, 5, 4, generator=g, dtype=F64)
    dec = SimpleGaussianDecoder(nn.Identity())
    got = decoder_loglikelihood(x, None, dec, SimpleGaussianOutput(mu))
    torch.testing.assert_close(got, Independent(Normal(mu, 1.0), 1).log_prob(x))
    got2 = decoder_loglikelihood(x, None, dec, SimpleGaussianOutput(mu), sigma=2.0)
    torch.testing.assert_close(got2, Independent(Normal(mu, 2.0), 1).log_prob(x))


def test_simple_gaussian_loglikelihood_hand_value():
    x = torch.tensor([[1.0, 2.0, 3.0]], dtype=F64)
    mu = torch.tensor([[1.0, 0.0, 3.0]], dtype=F64)
    got = decoder_loglikelihood(x, None, SimpleGaussianDecoder(nn.Identity()),
                                SimpleGaussianOutput(mu))
    torch.testing.assert_close(got, torch.tensor([-2.0 - 1.5 * LOG_2PI], dtype=F64))


@pytest.mark.parametrize("cls", [JointGaussianLogDecoder, SplitGaussianLogDecoder])
def test_gaussian_log_loglikelihood_matches_normal(cls):
    g = gen(3)
    x, mu, logsigma = torch.randn(3, 6, 2, 2, generator=g, dtype=F64)
    dec = decoder(cls, (2, 2))
    got = decoder_loglikelihood(x, None, dec, GaussianLogOutput(mu, logsigma))
    torch.testing.assert_close(got, Independent(Normal(mu, logsigma.exp()), 2).log_prob(x))


@pytest.mark.parametrize("cls", [JointGaussianDecoder, SplitGaussianDecoder])
def test_gaussian_sigma_loglikelihood_matches_normal(cls):
    g = gen(4)
    x, mu = torch.randn(2, 6, 5, generator=g, dtype=F64)
    sigma = torch.rand(6, 5, generator=g, dtype=F64) + 0.1
    got = decoder_loglikelihood(x, None, decoder(cls, 5), GaussianOutput(mu, sigma))
    torch.testing.assert_close(got, Independent(Normal(mu, sigma), 1).log_prob(x))


def test_gaussian_loglikelihood_hand_value():
    # x - mu = 2, sigma = 2 (logsigma = log 2): -1/2 * 1 - log 2 - 1/2 log 2 pi
    x, mu = torch.tensor([[3.0]], dtype=F64), torch.tensor([[1.0]], dtype=F64)
    want = torch.tensor([-0.5 - math.log(2) - 0.5 * LOG_2PI], dtype=F64)
    dec = decoder(JointGaussianLogDecoder, 1)
    out = GaussianLogOutput(mu, torch.full_like(mu, math.log(2)))
    torch.testing.assert_close(decoder_loglikelihood(x, None, dec, out), want)
    dec = decoder(JointGaussianDecoder, 1)
    out = GaussianOutput(mu, torch.full_like(mu, 2.0))
    torch.testing.assert_close(decoder_loglikelihood(x, None, dec, out), want)


@pytest.mark.parametrize("cls", DECODERS)
def test_loglikelihood_of_s_blocks_equals_explicit_repeat(cls):
    n, s, shape = 4, 3, (2, 3)
    g = gen(5)
    dec = decoder(cls, shape, n_latent=2)
    x = torch.rand(n, *shape, generator=g, dtype=F64)
    z = torch.randn(s * n, 2, generator=g, dtype=F64)
    out = dec(z)
    got = decoder_loglikelihood(x, z, dec, out)
    want = decoder_loglikelihood(x.repeat(s, 1, 1), z, dec, out)
    assert got.shape == (s * n,)
    torch.testing.assert_close(got, want)
    # and block b of rows pairs with x row for row
    for b in range(s):
        block = type(out)(*(t[b * n:(b + 1) * n] for t in out))
        torch.testing.assert_close(got[b * n:(b + 1) * n],
                                   decoder_loglikelihood(x, z[b * n:(b + 1) * n], dec, block))


def test_loglikelihood_error_cases():
    x = torch.rand(4, 6)
    bern, gauss = BernoulliDecoder(nn.Identity()), decoder(JointGaussianLogDecoder).float()
    with pytest.raises(TypeError, match="BernoulliDecoder outputs a BernoulliOutput"):
        decoder_loglikelihood(x, None, bern, GaussianLogOutput(x, x))
    with pytest.raises(TypeError, match="GaussianOutput"):
        decoder_loglikelihood(x, None, gauss, GaussianOutput(x, x))
    with pytest.raises(TypeError, match="BernoulliOutput"):
        decoder_loglikelihood(x, None, bern, x)  # a bare tensor
    with pytest.raises(TypeError, match="unsupported decoder"):
        decoder_loglikelihood(x, None, nn.Identity(), BernoulliOutput(x))
    with pytest.raises(ValueError, match="5 features per sample but x has 6"):
        decoder_loglikelihood(x, None, bern, BernoulliOutput(torch.rand(4, 5)))
    with pytest.raises(ValueError, match="not a multiple"):
        decoder_loglikelihood(x, None, bern, BernoulliOutput(torch.rand(6, 6)))


# ----------------------------------------------------------------------------- KL, prior, posterior

def test_encoder_kl_matches_torch_distributions():
    g = gen(6)
    mu, logsigma = torch.randn(2, 8, 3, generator=g, dtype=F64)
    want = kl_divergence(Normal(mu, logsigma.exp()), Normal(0.0, 1.0)).sum(-1)
    got = encoder_kl(encoder(JointGaussianLogEncoder), GaussianLogOutput(mu, logsigma))
    assert got.shape == (8,)
    torch.testing.assert_close(got, want)
    got = encoder_kl(encoder(JointGaussianEncoder), GaussianOutput(mu, logsigma.exp()))
    torch.testing.assert_close(got, want)


def test_encoder_kl_hand_values():
    enc = encoder(JointGaussianLogEncoder)
    mu = torch.tensor([[0.0, 0.0], [1.0, 0.0]], dtype=F64)
    logsigma = torch.tensor([[0.0, 0.0], [0.0, math.log(2)]], dtype=F64)
    # row 1: 1/2 (1 + 1 - 1) + 1/2 (4 - 1 - 2 log 2)
    want = torch.tensor([0.0, 0.5 + 1.5 - math.log(2)], dtype=F64)
    torch.testing.assert_close(encoder_kl(enc, GaussianLogOutput(mu, logsigma)), want)


def test_encoder_kl_error_on_mismatched_output():
    mu = torch.zeros(2, 3)
    with pytest.raises(TypeError, match="JointGaussianEncoder outputs a GaussianOutput"):
        encoder_kl(encoder(JointGaussianEncoder), GaussianLogOutput(mu, mu))
    with pytest.raises(TypeError, match="unsupported encoder"):
        encoder_kl(nn.Identity(), GaussianLogOutput(mu, mu))


def test_spherical_logprior_matches_normal():
    z = torch.randn(9, 4, generator=gen(7), dtype=F64)
    torch.testing.assert_close(spherical_logprior(z), Normal(0.0, 1.0).log_prob(z).sum(-1))
    torch.testing.assert_close(spherical_logprior(torch.zeros(1, 3, dtype=F64)),
                               torch.tensor([-1.5 * LOG_2PI], dtype=F64))


@pytest.mark.parametrize("z_shape", [(5, 3), (4, 5, 3)])
def test_encoder_logposterior_matches_normal(z_shape):
    g = gen(8)
    mu, logsigma = torch.randn(2, 5, 3, generator=g, dtype=F64)
    z = torch.randn(z_shape, generator=g, dtype=F64)
    want = Normal(mu, logsigma.exp()).log_prob(z).sum(-1)
    got = encoder_logposterior(z, encoder(JointGaussianLogEncoder),
                               GaussianLogOutput(mu, logsigma))
    assert got.shape == z_shape[:-1]
    torch.testing.assert_close(got, want)
    got = encoder_logposterior(z, encoder(JointGaussianEncoder),
                               GaussianOutput(mu, logsigma.exp()))
    torch.testing.assert_close(got, want)


# ----------------------------------------------------------------------------- sampling

def test_reparameterize_is_one_randn_like_draw():
    mu, logsigma = torch.randn(2, 4, 3, generator=gen(9), dtype=F64)
    torch.manual_seed(123)
    z = reparameterize(mu, logsigma)
    torch.manual_seed(123)
    eps = torch.randn_like(mu)
    torch.testing.assert_close(z, mu + eps * logsigma.exp())
    torch.manual_seed(123)
    torch.testing.assert_close(reparameterize(mu, logsigma.exp(), log=False), z)


def test_reparameterize_n_samples_is_one_randn_draw():
    mu, logsigma = torch.randn(2, 4, 3, generator=gen(10), dtype=F64)
    torch.manual_seed(5)
    z = reparameterize(mu, logsigma, n_samples=6)
    assert z.shape == (6, 4, 3)
    torch.manual_seed(5)
    eps = torch.randn((6, 4, 3), dtype=F64)
    torch.testing.assert_close(z, mu + eps * logsigma.exp())
    assert reparameterize(mu, logsigma, n_samples=1).shape == (4, 3)


@pytest.mark.parametrize("log", [True, False])
def test_reparameterize_statistics(log):
    torch.manual_seed(0)
    mu = torch.tensor([1.0, -2.0], dtype=F64)
    sigma = torch.tensor([0.5, 2.0], dtype=F64)
    z = reparameterize(mu, sigma.log() if log else sigma, log=log, n_samples=200_000)
    # standard errors are sigma / sqrt(2e5) < 0.005 and sigma / sqrt(4e5) < 0.0032
    torch.testing.assert_close(z.mean(0), mu, atol=0.025, rtol=0)
    torch.testing.assert_close(z.std(0), sigma, atol=0.02, rtol=0)


@pytest.mark.parametrize("bad, error", [(0, ValueError), (-1, ValueError), (1.5, TypeError),
                                        (True, TypeError)])
def test_reparameterize_rejects_bad_n_samples(bad, error):
    with pytest.raises(error, match="n_samples"):
        reparameterize(torch.zeros(2), torch.zeros(2), n_samples=bad)


@pytest.mark.parametrize("enc_cls", ENCODERS)
def test_vae_latent_output_and_seeded_sample(enc_cls):
    vae = VAE(encoder(enc_cls, 6, 2), decoder(JointGaussianLogDecoder, 6, 2))
    x = torch.rand(5, 6, generator=gen(11), dtype=F64)
    torch.manual_seed(42)
    out = vae(x, latent=True)
    assert isinstance(out, VAEOutput) and isinstance(out.encoder, OUTPUT_OF[enc_cls])
    assert out.z.shape == (5, 2)
    mu, scale = vae.encoder(x)
    torch.manual_seed(42)
    eps = torch.randn_like(mu)
    scale = scale.exp() if enc_cls is JointGaussianLogEncoder else scale
    torch.testing.assert_close(out.z, mu + eps * scale)
    for got, want in zip(out.decoder, vae.decoder(out.z)):
        torch.testing.assert_close(got, want)
    torch.manual_seed(42)
    plain = vae(x)
    assert isinstance(plain, GaussianLogOutput)
    torch.testing.assert_close(plain.mu, out.decoder.mu)


def test_vae_n_samples_decodes_s_blocks_of_n():
    vae = VAE(encoder(JointGaussianLogEncoder, (2, 3), 2), decoder(BernoulliDecoder, (2, 3), 2))
    x = torch.rand(4, 2, 3, generator=gen(12), dtype=F64)
    torch.manual_seed(3)
    out = vae(x, latent=True, n_samples=3)
    assert out.z.shape == (3, 4, 2) and out.decoder.p.shape == (12, 2, 3)
    torch.testing.assert_close(out.decoder.p[4:8], vae.decoder(out.z[1]).p)
    torch.manual_seed(3)
    torch.testing.assert_close(out.z, vae.sample_latent(vae.encoder(x), n_samples=3))
    assert decoder_loglikelihood(x, out.z, vae.decoder, out.decoder).shape == (12,)


def test_sample_latent_rejects_other_outputs():
    vae = VAE(encoder(JointGaussianLogEncoder), decoder(BernoulliDecoder))
    with pytest.raises(TypeError, match="GaussianLogOutput or a GaussianOutput"):
        vae.sample_latent(BernoulliOutput(torch.zeros(2, 3)))


def test_gradients_reach_every_parameter():
    vae = VAE(JointGaussianLogEncoder.from_sizes((1, 4, 4), 2, [8], [torch.tanh]),
              BernoulliDecoder.from_sizes((1, 4, 4), 2, [8], [torch.relu]))
    x = torch.rand(6, 1, 4, 4, generator=gen(13))
    out = vae(x, latent=True)
    loss = (-decoder_loglikelihood(x, out.z, vae.decoder, out.decoder)
            + encoder_kl(vae.encoder, out.encoder)).mean()
    loss.backward()
    for name, param in vae.named_parameters():
        assert param.grad is not None and torch.isfinite(param.grad).all(), name
        assert param.grad.abs().sum() > 0, name


# ----------------------------------------------------------------------------- builders

@pytest.mark.parametrize("size", [12, (1, 8, 8), [3, 4]])
@pytest.mark.parametrize("cls", ENCODERS)
def test_encoder_builders(cls, size):
    enc = cls.from_sizes(size, 3, [16, 8], [torch.relu, "tanh"])
    shape = (size,) if isinstance(size, int) else tuple(size)
    out = enc(torch.randn(5, *shape, generator=gen(14)))
    assert isinstance(out, OUTPUT_OF[cls])
    assert all(t.shape == (5, 3) for t in out)
    if cls is JointGaussianEncoder:
        assert (out.sigma > 0).all()


@pytest.mark.parametrize("size", [12, (1, 8, 8)])
@pytest.mark.parametrize("cls", DECODERS)
def test_decoder_builders(cls, size):
    dec = cls.from_sizes(size, 3, [8, 16], [nn.ReLU(), torch.nn.functional.gelu])
    shape = (size,) if isinstance(size, int) else tuple(size)
    out = dec(torch.randn(5, 3, generator=gen(15)))
    assert isinstance(out, OUTPUT_OF[cls])
    assert all(t.shape == (5, *shape) for t in out)
    if cls is BernoulliDecoder:
        assert ((out.p > 0) & (out.p < 1)).all()
    if isinstance(out, GaussianOutput):
        assert (out.sigma > 0).all()


def test_builders_without_hidden_layers():
    enc = JointGaussianLogEncoder.from_sizes((2, 3), 4, [], [])
    assert [t.shape for t in enc(torch.randn(2, 2, 3))] == [(2, 4), (2, 4)]
    dec = SplitGaussianDecoder.from_sizes(5, 4, [], [])
    assert [t.shape for t in dec(torch.randn(2, 4))] == [(2, 5), (2, 5)]


def test_builder_layers_init_and_activations():
    enc = JointGaussianLogEncoder.from_sizes((1, 8, 8), 2, [10], [torch.relu], init=nn.init.ones_)
    assert isinstance(enc.encoder[0], nn.Flatten)
    linears = [m for m in enc.modules() if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(64, 10), (10, 2), (10, 2)]
    assert all((m.weight == 1).all() and (m.bias == 0).all() for m in linears)
    # default init: xavier uniform bounds, zero biases
    dec = BernoulliDecoder.from_sizes(30, 2, [10], [torch.relu])
    first = dec.decoder[0]
    assert first.weight.abs().max() <= math.sqrt(6 / (2 + 10)) and (first.bias == 0).all()
    assert isinstance(dec.decoder[-1], nn.Sigmoid)
    # the sigma-variants end their sigma head in softplus; a pair sets both heads
    gauss = JointGaussianEncoder.from_sizes(4, 2, [3], [torch.relu])
    assert isinstance(gauss.mu[-1], nn.Identity) and isinstance(gauss.sigma[-1], nn.Softplus)
    pair = JointGaussianLogDecoder.from_sizes(4, 2, [3], [torch.relu], [torch.tanh, "elu"])
    assert isinstance(pair.mu[1], nn.Tanh) and isinstance(pair.logsigma[1], nn.ELU)
    split = SplitGaussianLogDecoder.from_sizes(4, 2, [3], ["relu"], logsigma_neurons=[7, 5],
                                               logsigma_activation=["tanh", "tanh"])
    assert [m.out_features for m in split.logsigma if isinstance(m, nn.Linear)] == [7, 5, 4]
    assert [m.out_features for m in split.mu if isinstance(m, nn.Linear)] == [3, 4]


@pytest.mark.parametrize("cls", ENCODERS + DECODERS)
def test_builder_errors(cls):
    with pytest.raises(ValueError, match="exactly one activation"):
        cls.from_sizes(4, 2, [3, 3], [torch.relu])
    with pytest.raises(ValueError, match="n_latent must be a positive int"):
        cls.from_sizes(4, 0, [3], [torch.relu])
    with pytest.raises(ValueError, match=r"neurons\[1\] must be a positive int"):
        cls.from_sizes(4, 2, [3, -1], [torch.relu, torch.relu])
    size_name = "size_input" if cls in ENCODERS else "size_output"
    with pytest.raises(ValueError, match=rf"{size_name}\[1\] must be a positive int"):
        cls.from_sizes((1, 0), 2, [3], [torch.relu])
    with pytest.raises(ValueError, match=f"{size_name} must be a positive int"):
        cls.from_sizes(-4, 2, [3], [torch.relu])
    with pytest.raises(TypeError, match="one activation per layer"):
        cls.from_sizes(4, 2, [3], torch.relu)


@pytest.mark.parametrize("cls", ENCODERS + DECODERS)
def test_builder_sizes_must_be_positive_ints(cls):
    size_name = "size_input" if cls in ENCODERS else "size_output"
    with pytest.raises(TypeError, match=f"{size_name} must be a positive int, got float 4.0"):
        cls.from_sizes(4.0, 2, [3], [torch.relu])
    with pytest.raises(TypeError, match=f"{size_name} must be a positive int, got bool True"):
        cls.from_sizes(True, 2, [3], [torch.relu])
    with pytest.raises(ValueError, match=rf"{size_name}\[0\] must be a positive int, got -2"):
        cls.from_sizes([-2, -3], 2, [3], [torch.relu])
    with pytest.raises(TypeError, match=rf"{size_name}\[1\] must be a positive int, got float"):
        cls.from_sizes((2, 2.0), 2, [3], [torch.relu])
    with pytest.raises(TypeError, match="n_latent must be a positive int, got bool True"):
        cls.from_sizes(4, True, [3], [torch.relu])
    with pytest.raises(TypeError, match=r"neurons\[0\] must be a positive int, got bool"):
        cls.from_sizes(4, 2, [True], [torch.relu])


def test_split_builder_checks_second_net_and_output_pairs():
    with pytest.raises(ValueError, match="sigma_neurons has 2 layers but sigma_activation has 1"):
        SplitGaussianDecoder.from_sizes(4, 2, [3], ["relu"], sigma_neurons=[3, 3])
    with pytest.raises(ValueError, match="one activation or a pair"):
        JointGaussianLogDecoder.from_sizes(4, 2, [3], ["relu"], ["relu"] * 3)


# ----------------------------------------------------------------------------- configs

CONFIG_CASES = [
    (JointGaussianLogEncoder, dict(latent_activation=[nn.Identity(), torch.tanh])),
    (JointGaussianEncoder, {}),
    (BernoulliDecoder, {}),
    (SimpleGaussianDecoder, dict(output_activation=nn.LeakyReLU(0.3))),
    (JointGaussianLogDecoder, {}),
    (SplitGaussianLogDecoder, dict(logsigma_neurons=[6], logsigma_activation=[nn.ELU(0.5)])),
    (JointGaussianDecoder, dict(output_activation=["sigmoid", "softplus"])),
    (SplitGaussianDecoder, dict(sigma_neurons=[4, 4], sigma_activation=["silu", "gelu"])),
]


@pytest.mark.parametrize("cls,extra", CONFIG_CASES)
def test_from_config_rebuilds_the_architecture(cls, extra):
    size = (1, 8, 8)
    m = cls.from_sizes(size, 3, [9, 5], [torch.relu, nn.LeakyReLU(0.2)], **extra)
    config = json.loads(json.dumps(m.config))
    assert config == m.config and config["class"] == cls.__name__
    rebuilt = cls.from_config(config)
    assert rebuilt.config == m.config
    assert repr(rebuilt) == repr(m)
    rebuilt.load_state_dict(m.state_dict())
    inp = torch.randn(4, *size) if cls in ENCODERS else torch.randn(4, 3)
    for got, want in zip(rebuilt(inp), m(inp)):
        torch.testing.assert_close(got, want)
    assert type(module_from_config(config)) is cls


def test_config_contents():
    enc = JointGaussianLogEncoder.from_sizes((1, 8, 8), 2, [16], [nn.LeakyReLU(0.2)])
    assert enc.config == {
        "class": "JointGaussianLogEncoder", "size_input": [1, 8, 8], "n_latent": 2,
        "encoder_neurons": [16],
        "encoder_activation": [{"name": "leaky_relu", "param": pytest.approx(0.2)}],
        "latent_activation": "identity",
    }
    dec = BernoulliDecoder.from_sizes(64, 2, [16], [nn.LeakyReLU()])
    assert dec.config["decoder_activation"] == ["leaky_relu"]
    assert dec.config["output_activation"] == "sigmoid"
    assert BernoulliDecoder(nn.Identity()).config is None


def test_vae_config_round_trip():
    vae = VAE(JointGaussianEncoder.from_sizes(10, 2, [6], ["relu"]),
              SplitGaussianLogDecoder.from_sizes(10, 2, [6], ["tanh"]))
    config = json.loads(json.dumps(vae.config))
    rebuilt = module_from_config(config)
    assert isinstance(rebuilt, VAE) and rebuilt.config == vae.config
    rebuilt.load_state_dict(vae.state_dict())
    x = torch.randn(3, 10)
    torch.manual_seed(0)
    want = vae(x)
    torch.manual_seed(0)
    for got, w in zip(rebuilt(x), want):
        torch.testing.assert_close(got, w)
    assert VAE(nn.Identity(), vae.decoder).config is None


def test_from_config_errors():
    custom = BernoulliDecoder.from_sizes(4, 2, [3], [lambda t: t * 2])
    assert custom.config["decoder_activation"] == [None]
    with pytest.raises(ValueError, match=r"'decoder_activation\[0\]'.*cannot be rebuilt"):
        BernoulliDecoder.from_config(custom.config)
    good = BernoulliDecoder.from_sizes(4, 2, [3], ["relu"]).config
    wrong = "config is for 'BernoulliDecoder', not 'SimpleGaussianDecoder'"
    with pytest.raises(ValueError, match=wrong):
        SimpleGaussianDecoder.from_config(good)
    with pytest.raises(ValueError, match="no known encoder, decoder or VAE class"):
        module_from_config({"class": "Nope"})
