"""The one table of named activations (infomax_ext.activations.ACTIVATIONS) and what reads it:
modules, callables, configs, the kernels' list, the training options and the CLI."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import infomax_ext as im
from infomax_ext.activations import (
    ACTIVATIONS,
    HIDDEN_ACTIVATIONS,
    KERNEL_ACTIVATIONS,
    ActivationSpec,
    activation_config,
    activation_from_config,
    apply_activation,
    as_module,
    kernel_spec,
    spec_of_module,
)
from infomax_ext.cli import build_parser
from infomax_ext.trainer import TrainConfig

from activation_cases import param_of


@pytest.mark.parametrize("name", ACTIVATIONS)
def test_each_entry_agrees_with_its_module_and_callables(name):
    entry = ACTIVATIONS[name]
    x = torch.linspace(-25, 25, 101, dtype=torch.float64)
    p = param_of(name)
    module = entry.build(p if entry.param is not None else None)
    assert type(module) is entry.module
    torch.testing.assert_close(module(x), apply_activation(x, name, p), rtol=0, atol=0)
    assert spec_of_module(module) == ActivationSpec(name, p)
    assert type(as_module(name)) is entry.module
    assert spec_of_module(as_module(name)) == ActivationSpec(name, entry.default or 0.0)
    for f in entry.callables:
        assert type(as_module(f)) is entry.module
    assert (kernel_spec(module) is not None) == entry.kernel


@pytest.mark.parametrize("name", ACTIVATIONS)
def test_each_entry_round_trips_through_a_config(name):
    entry = ACTIVATIONS[name]
    assert activation_config(name) == name
    assert type(activation_from_config(name, "key")) is entry.module
    if entry.param is not None:
        module = entry.build(param_of(name))
        config = activation_config(module)
        assert config == {"name": name, "param": param_of(name)}
        again = activation_from_config(config, "key")
        assert getattr(again, entry.param) == param_of(name)
    else:
        with pytest.raises(ValueError, match="takes no parameter"):
            activation_from_config({"name": name, "param": 1.0}, "key")


def test_the_lists_are_read_from_the_table(capsys):
    assert KERNEL_ACTIVATIONS == tuple(n for n, a in ACTIVATIONS.items() if a.kernel)
    assert HIDDEN_ACTIVATIONS == tuple(n for n in ACTIVATIONS if n != "identity")
    parser = build_parser()
    for name in HIDDEN_ACTIVATIONS:
        assert parser.parse_args(["train", "--activation", name]).activation == name
        TrainConfig(activation=name).validate()
    with pytest.raises(SystemExit):
        parser.parse_args(["train", "--activation", "identity"])
    assert ", ".join(map(repr, HIDDEN_ACTIVATIONS)) in capsys.readouterr().err


def test_mish_is_a_named_kernel_activation():
    assert "mish" in KERNEL_ACTIVATIONS and "mish" in HIDDEN_ACTIVATIONS
    assert isinstance(as_module(F.mish), nn.Mish)
    assert kernel_spec(nn.Mish()) == ActivationSpec("mish")
    mi = im.MutualInfoChain.from_sizes(6, 2, [5], ["mish"], F.mish)
    assert mi.config["mlp_activations"] == ["mish"] and mi.config["output_activation"] == "mish"
    enc = im.JointGaussianLogEncoder.from_sizes(6, 2, [5], [nn.Mish()])
    assert enc.config["encoder_activation"] == ["mish"]
    assert isinstance(im.JointGaussianLogEncoder.from_config(enc.config).encoder[1], nn.Mish)


def test_modules_that_differ_from_the_kernels_formula_have_no_name():
    assert spec_of_module(nn.Softplus(beta=2)) is None
    assert spec_of_module(nn.GELU(approximate="tanh")) is None
    assert spec_of_module(nn.Hardswish()) is None
    with pytest.raises(ValueError, match="unknown activation name 'swish'; known: identity, relu"):
        as_module("swish")
