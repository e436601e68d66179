"""Misuse of the Python API: each mistake is refused before any work, naming the argument, the
optimizer or the modules, and the integer scalars of numpy and torch are taken as integers."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from torch import nn

import infomax_ext as im
from infomax_ext.data import DataError, check_samples, check_values, load_file
from infomax_ext.trainer import TrainConfig, Trainer

F64 = torch.float64


def small_model(n_x=6, n_z=3, seed=0):
    torch.manual_seed(seed)
    enc = im.JointGaussianLogEncoder.from_sizes(n_x, n_z, [8], ["relu"])
    dec = im.BernoulliDecoder.from_sizes(n_x, n_z, [8], ["relu"])
    mi = im.MutualInfoChain.from_sizes(n_x, n_z, [8], ["relu"])
    return im.InfoMaxVAE(im.VAE(enc, dec), mi).double()


def data(n=16, n_x=6, seed=1):
    return torch.rand(n, n_x, dtype=F64, generator=torch.Generator().manual_seed(seed))


def snapshot(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def assert_unchanged(model, before):
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), f"{k} changed"


def sgd(params):
    return torch.optim.SGD(params, lr=0.1)


# ----------------------------------------------------------------------------- optimizers

def test_train_step_refuses_a_vae_optimizer_of_another_model():
    model, other, x = small_model(), small_model(seed=1), data()
    before = snapshot(model)
    opt = {"vae": sgd(other.vae.parameters()), "mi": sgd(model.mi.parameters())}
    with pytest.raises(ValueError, match=r"opt\['vae'\] holds 10 of its 10 parameters from no part "
                                         r"of this model, not model.vae"):
        im.train_step(model, x, opt)
    assert_unchanged(model, before)


def test_train_step_refuses_swapped_optimizers_naming_them():
    model, x = small_model(), data()
    before = snapshot(model)
    opt = {"vae": sgd(model.mi.parameters()), "mi": sgd(model.vae.parameters())}
    with pytest.raises(ValueError, match=r"opt\['vae'\] holds 8 of its 8 parameters from model.mi, "
                                         r"not model.vae \(are the two optimizers swapped\?\)"):
        im.train_step(model, x, opt)

    class Pair:  # the attribute form names the optimizer as written
        vae = sgd(model.vae.parameters())
        mi = sgd(list(model.mi.parameters()) + [model.vae.decoder.decoder[0].weight])

    with pytest.raises(ValueError, match=r"opt.mi holds 1 of its 9 parameters from model.vae"):
        im.train_step(model, x, Pair())
    assert_unchanged(model, before)


def test_train_step_takes_an_optimizer_over_part_of_its_network():
    model, x = small_model(), data()
    decoder_only = sgd(model.vae.decoder.parameters())
    encoder_before = snapshot(model.vae.encoder)
    decoder_before = snapshot(model.vae.decoder)
    im.train_step(model, x, {"vae": decoder_only, "mi": sgd(model.mi.parameters())}, )
    assert_unchanged(model.vae.encoder, encoder_before)
    assert any(not torch.equal(v, decoder_before[k])
               for k, v in model.vae.decoder.state_dict().items())


def test_optimizer_check_sees_a_parameter_group_added_after_a_good_step():
    # The check is cached per layout of the param groups: a group added later is seen.
    model, other, x = small_model(), small_model(seed=1), data()
    opt = {"vae": sgd(model.vae.parameters()), "mi": sgd(model.mi.parameters())}
    im.train_step(model, x, opt)
    im.train_step(model, x, opt)
    opt["vae"].add_param_group({"params": list(other.mi.parameters())})
    before = snapshot(model)
    with pytest.raises(ValueError, match=r"opt\['vae'\] holds 8 of its 18 parameters"):
        im.train_step(model, x, opt)
    assert_unchanged(model, before)


def test_optimizer_with_no_trainable_parameter_of_its_network_is_refused():
    model, x = small_model(), data()
    for p in model.vae.decoder.parameters():
        p.requires_grad_(False)
    opt = {"vae": sgd(model.vae.decoder.parameters()), "mi": sgd(model.mi.parameters())}
    with pytest.raises(ValueError, match=r"opt\['vae'\] holds no trainable parameter of model.vae"):
        im.train_step(model, x, opt)


# ----------------------------------------------------------------------------- loss weights

@pytest.mark.parametrize("kwargs, error, message", [
    ({"reg_strength": float("nan")}, ValueError, "reg_strength must be a non-negative finite number, got nan"),
    ({"beta": -1, "alpha": float("inf")}, ValueError, "beta must be a non-negative finite number, got -1"),
    ({"alpha": float("inf")}, ValueError, "alpha must be a non-negative finite number, got inf"),
    ({"alpha": -0.5}, ValueError, "alpha must be a non-negative finite number, got -0.5"),
    ({"alpha": "5"}, TypeError, "alpha must be a non-negative finite number, got str '5'"),
    ({"beta": True}, TypeError, "beta must be a non-negative finite number, got bool"),
    ({"alpha": torch.ones(2)}, TypeError, "alpha must be a non-negative finite number, got a tensor"),
    ({"alpha": torch.tensor(float("nan"))}, ValueError, "alpha must be a non-negative finite"),
])
def test_infomaxloss_refuses_bad_weights_naming_them(kwargs, error, message):
    model, x = small_model(), data()
    with pytest.raises(error, match=f"^infomaxloss: {message}"):
        im.infomaxloss(model.vae, model.mi, x, regularization=lambda out: out.z.pow(2).mean(),
                       **kwargs)


def test_miloss_refuses_a_bad_reg_strength():
    model, x = small_model(), data()
    with pytest.raises(ValueError, match="^miloss: reg_strength must be a non-negative finite"):
        im.miloss(model.vae, model.mi, x, reg_strength=float("nan"))


@pytest.mark.parametrize("reuse_forward", [False, True])
@pytest.mark.parametrize("kwargs_name, kwargs, message", [
    ("infomaxloss_kwargs", {"alpha": float("nan")}, r"infomaxloss_kwargs\['alpha'\]"),
    ("infomaxloss_kwargs", {"reg_strength": -2.0}, r"infomaxloss_kwargs\['reg_strength'\]"),
    ("miloss_kwargs", {"reg_strength": float("inf")}, r"miloss_kwargs\['reg_strength'\]"),
])
def test_train_step_refuses_bad_weights_before_any_step(reuse_forward, kwargs_name, kwargs,
                                                         message):
    # A bad MI weight would otherwise be found after the VAE step: nothing may move.
    model, x = small_model(), data()
    before = snapshot(model)
    opt = {"vae": sgd(model.vae.parameters()), "mi": sgd(model.mi.parameters())}
    with pytest.raises(ValueError, match=f"^train_step: {message} must be a non-negative finite"):
        im.train_step(model, x, opt, reuse_forward=reuse_forward, **{kwargs_name: kwargs})
    assert_unchanged(model, before)


def test_weights_of_any_real_type_give_the_float_weights_loss():
    model, x = small_model(), data()

    def loss(**kwargs):
        torch.manual_seed(3)
        return im.infomaxloss(model.vae, model.mi, x, seed=4, **kwargs)

    want = loss(beta=2.0, alpha=0.0)
    for beta, alpha in [(2, 0), (np.float32(2.0), np.int64(0)), (torch.tensor(2.0), torch.tensor(0))]:
        torch.testing.assert_close(loss(beta=beta, alpha=alpha), want, rtol=1e-6, atol=0)


@pytest.mark.parametrize("field, value, message", [
    ("alpha", "5", "alpha must be a non-negative finite number, got str '5'"),
    ("beta", float("inf"), "beta must be a non-negative finite number, got inf"),
    ("alpha", -1, "alpha must be a non-negative finite number, got -1"),
])
def test_train_config_refuses_bad_weights_naming_them(field, value, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(**{field: value}).validate()


# ----------------------------------------------------------------------------- Trainer data

def tiny_config(**kw):
    base = dict(latent_dim=2, encoder_neurons=[8], decoder_neurons=[8], mi_neurons=[8], epochs=1,
                batch_size=8, seed=0, eval_mi_steps=1)
    base.update(kw)
    return TrainConfig(**base)


def test_trainer_refuses_data_outside_unit_range_for_a_bernoulli_decoder(tmp_path):
    x = torch.rand(20, 4) * 3.0
    with pytest.raises(DataError, match=r"^train_data: values range over \[0\.\d+, 2\.\d+\] but the "
                                        r"Bernoulli decoder needs them in \[0, 1\]"):
        Trainer.create(tiny_config(), x, run_dir=tmp_path / "run")
    assert not (tmp_path / "run").exists()
    val = torch.rand(10, 4)
    val[3, 1] = -0.25
    with pytest.raises(DataError, match=r"^val_data: values range over \[-0\.25, "):
        Trainer.create(tiny_config(), torch.rand(20, 4), val)
    # The Gaussian decoder takes such data.
    Trainer.create(tiny_config(likelihood="gaussian"), x, progress=False)


@pytest.mark.parametrize("likelihood", ["bernoulli", "gaussian"])
def test_trainer_names_nan_in_the_data_not_a_divergence(likelihood):
    x = torch.rand(20, 4)
    x[5, 2] = float("nan")
    x[7, 0] = float("inf")
    with pytest.raises(DataError, match="^train_data: 2 values are NaN or infinite; clean the data"):
        Trainer.create(tiny_config(likelihood=likelihood), x)


def test_check_values_copies_nothing_and_takes_integer_data():
    check_values(torch.randint(0, 2, (10, 3)), "bernoulli", "ints")
    with pytest.raises(DataError, match=r"ints: values range over \[0, 2\]"):
        check_values(torch.arange(30).reshape(10, 3) % 3, "bernoulli", "ints")


# ----------------------------------------------------------------------------- data files

def test_finite_float64_beyond_float32_is_said_to_overflow(tmp_path):
    x = np.random.default_rng(0).random((10, 3))
    x[2, 1] = 1e39
    x[4, 0] = -5e300
    with pytest.raises(DataError, match=r"^big: 2 values overflow float32 \(finite float64 values up "
                                        r"to magnitude 5e\+300; float32 holds up to 3\.403e\+38\)"):
        check_samples(x, "gaussian", "big")
    np.save(tmp_path / "big.npy", x)
    for mmap in (False, True):
        with pytest.raises(DataError, match="2 values overflow float32"):
            load_file(tmp_path / "big.npy", likelihood="gaussian", mmap=mmap)
    x[2, 1] = np.nan  # NaN in the file comes first, named as such
    np.save(tmp_path / "nan.npy", x)
    for mmap in (False, True):
        with pytest.raises(DataError, match="1 values are NaN or infinite"):
            load_file(tmp_path / "nan.npy", likelihood="gaussian", mmap=mmap)


def test_float32_data_with_nan_is_still_named_nan():
    x = np.random.default_rng(0).random((10, 3)).astype(np.float32)
    x[0, 0] = np.inf
    with pytest.raises(DataError, match="1 values are NaN or infinite"):
        check_samples(x, "gaussian", "data")


# ----------------------------------------------------------------------------- widths

def test_vae_names_encoder_and_decoder_of_different_widths():
    enc = im.JointGaussianLogEncoder.from_sizes(6, 3, [8], ["relu"])
    dec = im.BernoulliDecoder.from_sizes(6, 4, [8], ["relu"])
    with pytest.raises(ValueError, match=r"^VAE\(encoder, decoder\): encoder \(JointGaussianLogEncoder\) "
                                         r"gives codes of width 3 \(its layer encoder.mu.0\) but decoder "
                                         r"\(BernoulliDecoder\) takes 4 features \(its layer "
                                         r"decoder.decoder.0\)"):
        im.VAE(enc, dec)
    for decoder in (im.SimpleGaussianDecoder, im.JointGaussianLogDecoder, im.JointGaussianDecoder,
                    im.SplitGaussianLogDecoder, im.SplitGaussianDecoder):
        with pytest.raises(ValueError, match=f"gives codes of width 2 .* decoder \\({decoder.__name__}\\) "
                                             "takes 4 features"):
            im.VAE(im.JointGaussianEncoder.from_sizes(6, 2, [8], ["relu"]),
                   decoder.from_sizes(6, 4, [8], ["relu"]))
        im.VAE(im.JointGaussianEncoder.from_sizes(6, 4, [], []), decoder.from_sizes(6, 4, [], []))


def test_infomax_vae_names_the_mi_chain_that_does_not_fit():
    enc = im.JointGaussianLogEncoder.from_sizes((2, 3), 3, [], [])
    vae = im.VAE(enc, im.SplitGaussianLogDecoder.from_sizes((2, 3), 3, [5], ["tanh"]))
    with pytest.raises(ValueError, match=r"vae.encoder \(JointGaussianLogEncoder\) gives codes of "
                                         r"width 3 .* but mi.latent \(Linear\) takes 4 features"):
        im.InfoMaxVAE(vae, im.MutualInfoChain.from_sizes(6, 4, [8], ["relu"]))
    with pytest.raises(ValueError, match=r"vae.encoder takes samples of 6 features \(its layer "
                                         r"vae.encoder.mu.0\) but mi.data takes 7"):
        im.InfoMaxVAE(vae, im.MutualInfoChain.from_sizes(7, 3, [8], ["relu"]))
    im.InfoMaxVAE(vae, im.MutualInfoChain.from_sizes((2, 3), 3, [8], ["relu"]))


def test_mutual_info_chain_names_an_mlp_of_the_wrong_width():
    with pytest.raises(ValueError, match=r"mi.data gives 6 features .* mi.latent gives 3 .* 9 "
                                         r"together, but mi.mlp takes 10 \(its layer mi.mlp.0\)"):
        im.MutualInfoChain(nn.Linear(6, 6), nn.Linear(3, 3), nn.Sequential(
            nn.Linear(10, 4), nn.ReLU(), nn.Linear(4, 1)))


def test_losses_name_the_module_whose_input_does_not_fit():
    torch.manual_seed(0)
    vae = im.VAE(im.JointGaussianLogEncoder.from_sizes(6, 3, [8], ["relu"]),
                 im.BernoulliDecoder.from_sizes(6, 3, [8], ["relu"])).double()
    mi4 = im.MutualInfoChain.from_sizes(6, 4, [8], ["relu"]).double()
    x = data()
    with pytest.raises(ValueError, match=r"^mi.latent \(Linear\) takes 4 features per sample .* but "
                                         r"was given 3 \(input of shape \(16, 3\)\)"):
        im.infomaxloss(vae, mi4, x)
    with pytest.raises(ValueError, match=r"^mi.latent \(Linear\) takes 4 features"):
        im.miloss(vae, mi4, x)
    with pytest.raises(ValueError, match=r"^mi.latent \(Linear\) takes 4 features"):
        mi4(x, torch.randn(16, 3, dtype=F64))
    with pytest.raises(ValueError, match=r"^vae.encoder \(JointGaussianLogEncoder\) takes 6 features "
                                         r"per sample \(its layer vae.encoder.encoder.0\) but was "
                                         r"given 5"):
        vae(data(n_x=5))
    with pytest.raises(ValueError, match=r"^vae.encoder .* takes 6 features"):
        im.infomaxloss(vae, mi4, data(n_x=5))


def test_other_errors_and_unknown_modules_pass_through():
    # A module whose widths cannot be read from Linear layers is not checked when built, and an
    # error that is not a width mismatch keeps its own message.
    class Doubler(nn.Module):
        def forward(self, x):
            return torch.cat([x, x], dim=1)

    enc = im.JointGaussianLogEncoder(nn.Sequential(Doubler(), nn.Linear(12, 8)), nn.Linear(8, 3),
                                     nn.Linear(8, 3))
    vae = im.VAE(enc, im.BernoulliDecoder.from_sizes(6, 3, [8], ["relu"]))
    assert vae(torch.rand(4, 6)).p.shape == (4, 6)
    with pytest.raises(RuntimeError, match="dtype"):
        vae(torch.rand(4, 6, dtype=F64))


# ----------------------------------------------------------------------------- integer scalars

@pytest.mark.parametrize("seed", [np.int64(3), np.uint8(3), torch.tensor(3), torch.tensor(3, dtype=torch.int32)])
def test_seeds_of_numpy_and_torch_integer_types(seed):
    model, x = small_model(), data()
    torch.manual_seed(7)
    want = im.infomaxloss(model.vae, model.mi, x, seed=3)
    torch.manual_seed(7)
    torch.testing.assert_close(im.infomaxloss(model.vae, model.mi, x, seed=seed), want, rtol=0, atol=0)
    z = torch.randn(16, 3, dtype=F64)
    want = im.variational_mutual_info(model.mi, x, z, seed=3)
    torch.testing.assert_close(im.variational_mutual_info(model.mi, x, z, seed), want, rtol=0, atol=0)
    assert torch.equal(im.shuffle_latent(z, seed), im.shuffle_latent(z, 3))


def test_n_samples_of_numpy_and_torch_integer_types():
    model, x = small_model(), data()
    torch.manual_seed(7)
    want = im.infomaxloss(model.vae, model.mi, x, n_samples=2, seed=1)
    for n_samples in (np.int64(2), torch.tensor(2)):
        torch.manual_seed(7)
        got = im.infomaxloss(model.vae, model.mi, x, n_samples=n_samples, seed=1)
        torch.testing.assert_close(got, want, rtol=0, atol=0)
    torch.manual_seed(7)
    assert model.vae(x, latent=True, n_samples=np.int32(2)).z.shape == (2, 16, 3)


@pytest.mark.parametrize("name, value", [
    ("seed", 1.5), ("seed", torch.tensor(3.0)), ("seed", True),
    ("n_samples", 2.0), ("n_samples", True), ("n_samples", np.float64(2)), ("n_samples", "2"),
    ("n_samples", torch.tensor([2])),
])
def test_non_integer_counts_and_seeds_are_refused_naming_them(name, value):
    model, x = small_model(), data()
    with pytest.raises(TypeError, match=f"{name} must be (a positive )?(an )?integer"):
        im.infomaxloss(model.vae, model.mi, x, **{name: value})


def test_train_config_takes_numpy_integers_as_ints():
    config = TrainConfig(seed=np.int64(3), latent_dim=np.int32(4), epochs=torch.tensor(2)).validate()
    assert (config.seed, config.latent_dim, config.epochs) == (3, 4, 2)
    assert all(type(v) is int for v in (config.seed, config.latent_dim, config.epochs))
    json.dumps(config.to_dict())


# ----------------------------------------------------------------------------- standard output

@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
def test_a_full_standard_output_is_named(tmp_path):
    with open("/dev/full", "w") as full:
        done = subprocess.run(
            [sys.executable, "-m", "infomax_ext", "train", "--out", str(tmp_path / "run"),
             "--epochs", "1", "--latent-dim", "2", "--encoder-neurons", "8", "--decoder-neurons",
             "8", "--mi-neurons", "8", "--quiet", "--no-plots"],
            stdout=full, stderr=subprocess.PIPE, text=True, timeout=300)
    assert done.returncode == 1, done.stderr
    assert done.stderr.strip().splitlines() == [
        "infomax-ext train: error: No space left on device (standard output)"]
