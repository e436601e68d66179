"""How the MI bound pairs its negatives (``negatives="shuffle"|"all"``) as a setting of the
InfoMax VAE: it reaches the losses (values against the all-pairs formulas written out here in
float64 on the whole N x N score matrix), is saved with the model, flows through TrainConfig,
Trainer, train_step and ``infomax-ext train --negatives``, is checked on ``--resume``; the
data-parallel scope is ``negatives_scope``, and files written with the scope under the key
``"negatives"`` still resume."""
import json
import math

import pytest
import torch

import infomax_ext as im
from infomax_ext.cli import main
from infomax_ext.serialization import SerializationError
from infomax_ext.train_config import TrainConfig, build_model, upgrade_options
from infomax_ext.trainer import Trainer
from tiny_runs import rewrite_checkpoint, save_data, train


def _model(negatives="shuffle", bound="nwj", seed=0):
    torch.manual_seed(seed)
    enc = im.JointGaussianLogEncoder.from_sizes(6, 3, [8], ["tanh"])
    dec = im.BernoulliDecoder.from_sizes(6, 3, [8], ["tanh"])
    mi = im.MutualInfoChain.from_sizes(6, 3, [10, 7], ["tanh", "relu"])
    return im.InfoMaxVAE(im.VAE(enc, dec), mi, bound=bound, negatives=negatives).double()


def _x(n=9, seed=1):
    return torch.rand(n, 6, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def score_matrix(mi, x, z):
    """S[i, j] = T(x_i, z_j): row i is the chain on x_i repeated against every code (float64)."""
    n = x.shape[0]
    return torch.stack([mi(x[i:i + 1].expand(n, -1), z).reshape(n) for i in range(n)])


def all_pairs_value(name, s, tau=5.0):
    """The bound on all pairs written out: joint scores the diagonal of ``s``, negatives the
    N(N - 1) entries off it (infonce: row-wise log-softmax of the diagonal, plus log N)."""
    n = s.shape[0]
    joint = [s[i, i] for i in range(n)]
    neg = [s[i, j] for i in range(n) for j in range(n) if i != j]
    mean_joint = sum(joint) / n
    if name == "nwj":
        return mean_joint - sum(torch.exp(t - 1) for t in neg) / len(neg)
    if name == "dv":
        return mean_joint - torch.log(sum(torch.exp(t) for t in neg) / len(neg))
    if name == "js":
        return mean_joint + 1 - sum(torch.exp(t) for t in neg) / len(neg)
    if name == "smile":
        return mean_joint - torch.log(sum(torch.exp(t.clamp(-tau, tau)) for t in neg) / len(neg))
    if name == "infonce":
        return sum(s[i, i] - torch.log(sum(torch.exp(s[i, j]) for j in range(n)))
                   for i in range(n)) / n + math.log(n)
    raise AssertionError(name)


# ------------------------------------------------------------------------------ the model


@pytest.mark.parametrize("bound", ["nwj", "dv", "js", "smile"])
def test_the_models_forward_takes_all_pairs(bound):
    model = _model("all", bound)
    x = _x()
    out = model(x, latent=True, seed=3)
    want = all_pairs_value(bound, score_matrix(model.mi, x, out.vae.z))
    assert torch.allclose(out.mi, want, rtol=1e-10, atol=1e-10)
    # the shuffled bound is another number: the setting decides
    shuffled = _model("shuffle", bound)(x, latent=True, seed=3).mi
    assert not torch.allclose(shuffled, want, rtol=1e-3, atol=1e-3)


class _Spy:
    """Wraps ``infomax.shuffled_bound``: records each call's z, negatives and result."""

    def __init__(self, real):
        self.real, self.calls = real, []

    def __call__(self, mi, x, z, *args, **kwargs):
        result = self.real(mi, x, z, *args, **kwargs)
        self.calls.append({"x": x.detach().clone(), "z": z.detach().clone(),
                           "negatives": kwargs.get("negatives"), "value": result.bound.detach()})
        return result


def _opt(model, lr=0.0):
    return {"vae": torch.optim.SGD(model.vae.parameters(), lr=lr),
            "mi": torch.optim.SGD(model.mi.parameters(), lr=lr)}


@pytest.mark.parametrize("bound", ["nwj", "dv"])
@pytest.mark.parametrize("reuse_forward", [False, True])
def test_train_step_losses_take_the_models_negatives(monkeypatch, bound, reuse_forward):
    model = _model("all", bound)
    spy = _Spy(im.infomax.shuffled_bound)
    monkeypatch.setattr(im.infomax, "shuffled_bound", spy)
    x = _x()
    vae_loss, mi_loss = im.train_step(model, x, _opt(model), loss_return=True,
                                      reuse_forward=reuse_forward,
                                      infomaxloss_kwargs={"alpha": 1.0})
    assert [c["negatives"] for c in spy.calls] == ["all"] * (1 if reuse_forward else 2)
    with torch.no_grad():  # lr 0: the weights the losses saw
        for call in spy.calls:
            want = all_pairs_value(bound, score_matrix(model.mi, call["x"], call["z"]))
            assert torch.allclose(call["value"], want, rtol=1e-10, atol=1e-10)
    # the MI loss train_step returns is minus that bound
    assert math.isclose(mi_loss, -float(spy.calls[-1]["value"]), rel_tol=1e-12, abs_tol=1e-12)


def test_train_step_negatives_overrides_the_model_and_conflicts_are_named(monkeypatch):
    spy = _Spy(im.infomax.shuffled_bound)
    monkeypatch.setattr(im.infomax, "shuffled_bound", spy)
    model, x = _model("all"), _x()
    im.train_step(model, x, _opt(model), negatives="shuffle")
    assert [c["negatives"] for c in spy.calls] == ["shuffle", "shuffle"]
    spy.calls.clear()
    plain = _model("shuffle")
    im.train_step(plain, x, _opt(plain), negatives="all")
    assert [c["negatives"] for c in spy.calls] == ["all", "all"]
    spy.calls.clear()
    im.train_step(plain, x, _opt(plain))  # the default: nothing passed
    assert [c["negatives"] for c in spy.calls] == ["shuffle", "shuffle"]
    with pytest.raises(ValueError, match=r"the model's negatives='all' contradicts "
                                         r"miloss_kwargs\['negatives'\]='shuffle'"):
        im.train_step(model, x, _opt(model), miloss_kwargs={"negatives": "shuffle"})
    with pytest.raises(ValueError, match=r"negatives='shuffle' contradicts "
                                         r"infomaxloss_kwargs\['negatives'\]='all'"):
        im.train_step(model, x, _opt(model), negatives="shuffle",
                      infomaxloss_kwargs={"negatives": "all"})
    with pytest.raises(ValueError, match=r"got 'local' \(the data-parallel scope 'global'/"
                                         r"'local' is negatives_scope\)"):
        im.train_step(model, x, _opt(model), negatives="local")
    with pytest.raises(ValueError, match="negatives_scope must be 'global' or 'local', got 'all'"):
        im.train_step(model, x, _opt(model), negatives_scope="all")


def test_custom_loss_functions_get_the_models_negatives_only_when_asked():
    model, x = _model("all"), _x()
    seen = []

    def vae_loss(vae, mi, x, **kwargs):
        seen.append(kwargs.get("negatives"))
        return im.infomaxloss(vae, mi, x, **kwargs)

    im.train_step(model, x, _opt(model), infomaxloss_function=vae_loss)
    im.train_step(model, x, _opt(model), infomaxloss_function=vae_loss, negatives="all")
    assert seen == [None, "all"]


def test_the_model_saves_and_loads_its_negatives(tmp_path):
    model = _model("all", "dv")
    assert model.config["negatives"] == "all"
    assert "negatives" not in _model("shuffle").config  # shuffle: the config as without it
    model.save(tmp_path / "m")
    loaded = im.InfoMaxVAE.load(tmp_path / "m")
    assert loaded.negatives == "all" and loaded.bound == im.BOUNDS["dv"]
    x = _x()
    assert torch.allclose(_forward_mi(loaded, x), _forward_mi(model, x), rtol=1e-12, atol=1e-12)
    assert im.InfoMaxVAE.load(_saved(_model("shuffle"), tmp_path / "s")).negatives == "shuffle"


def _forward_mi(model, x):
    torch.manual_seed(5)
    return model.to(torch.float64)(x, latent=True).mi


def _saved(model, path):
    model.save(path)
    return path


def test_bad_negatives_are_refused_by_name():
    with pytest.raises(ValueError, match="InfoMaxVAE: negatives must be one of 'shuffle', 'all', "
                                         "got 'pairs'"):
        _model("pairs")
    config = dict(_model("all").config, negatives="global")
    with pytest.raises(SerializationError, match="negatives must be one of .* got 'global'"):
        im.InfoMaxVAE.from_config(config)


# ------------------------------------------------------------------------------ TrainConfig


def test_train_config_has_both_settings_and_builds_the_model():
    config = TrainConfig()
    assert (config.negatives, config.negatives_scope) == ("shuffle", "global")
    config = TrainConfig(latent_dim=2, encoder_neurons=[4], decoder_neurons=[4],
                         mi_neurons=[4], negatives="all")
    assert build_model(config, (5,)).negatives == "all"
    assert TrainConfig.from_dict(config.to_dict()).negatives == "all"
    with pytest.raises(ValueError, match=r"negatives must be one of \['shuffle', 'all'\], got "
                                         r"'local' \(the data-parallel scope"):
        TrainConfig(negatives="local").validate()
    with pytest.raises(ValueError, match=r"negatives_scope must be one of \['global', 'local'\], "
                                         "got 'all'"):
        TrainConfig(negatives_scope="all").validate()


@pytest.mark.parametrize("scope", ["global", "local"])
def test_options_written_with_the_scope_under_negatives_are_read(scope):
    old = {k: v for k, v in TrainConfig().to_dict().items() if k != "negatives_scope"}
    old["negatives"] = scope
    config = TrainConfig.from_dict(old)
    assert (config.negatives, config.negatives_scope) == ("shuffle", scope)
    assert upgrade_options(old) == config.to_dict()
    # today's keys stay as they are; a scope word beside negatives_scope is an error
    assert upgrade_options({"negatives": "all", "negatives_scope": scope})["negatives"] == "all"
    with pytest.raises(ValueError, match="negatives must be one of"):
        TrainConfig.from_dict({"negatives": scope, "negatives_scope": "global"})


def test_trainer_refuses_a_model_that_pairs_otherwise_than_its_config():
    config = TrainConfig(latent_dim=2, encoder_neurons=[4], decoder_neurons=[4], mi_neurons=[4],
                         epochs=1, batch_size=8, negatives="all")
    x = torch.rand(16, 5, generator=torch.Generator().manual_seed(0))
    model = build_model(TrainConfig(latent_dim=2, encoder_neurons=[4], decoder_neurons=[4],
                                    mi_neurons=[4]), (5,))
    with pytest.raises(ValueError, match="config.negatives is 'all' but the model pairs its "
                                         "negatives by 'shuffle'"):
        Trainer(model, config, x, progress=False)


def test_trainer_trains_with_all_pairs_and_resumes(tmp_path, one_thread):
    config = TrainConfig(latent_dim=2, encoder_neurons=[4], decoder_neurons=[4], mi_neurons=[4],
                         epochs=1, batch_size=8, negatives="all")
    x = torch.rand(16, 5, generator=torch.Generator().manual_seed(0))
    trainer = Trainer.create(config, x, run_dir=tmp_path, progress=False)
    assert trainer.model.negatives == "all"
    trainer.fit()
    resumed = Trainer.from_checkpoint(tmp_path / "checkpoint.pt", x, epochs=2, progress=False)
    assert resumed.model.negatives == "all" and resumed.config.negatives == "all"
    resumed.fit()
    assert resumed.epoch == 2


# ------------------------------------------------------------------------------ command line


def test_train_command_with_all_pairs_records_it_and_resume_checks_it(tmp_path, capsys,
                                                                       one_thread):
    data, out = save_data(tmp_path / "x.npy"), tmp_path / "run"
    assert train(out, data, "--negatives", "all") == 0
    saved = json.loads((out / "config.json").read_text())["train"]
    assert (saved["negatives"], saved["negatives_scope"]) == ("all", "global")
    assert im.InfoMaxVAE.load(out / "model").negatives == "all"
    assert torch.load(out / "checkpoint.pt", weights_only=True)["model_config"]["negatives"] \
        == "all"
    capsys.readouterr()
    for option, value, before in (("--negatives", "shuffle", "all"),
                                  ("--negatives-scope", "local", "global")):
        with pytest.raises(SystemExit):
            main(["train", "--resume", "--out", str(out), "--epochs", "2", option, value,
                  "--quiet"])
        assert f"{option} {value} differs from the value the run was started with ({before})" \
            in capsys.readouterr().err
    assert main(["train", "--resume", "--out", str(out), "--epochs", "2", "--negatives", "all",
                 "--quiet", "--no-plots"]) == 0
    assert [json.loads(line)["epoch"] for line in
            (out / "metrics.jsonl").read_text().splitlines()] == [1, 2]


def test_the_scope_words_on_negatives_point_to_negatives_scope(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["train", "--out", str(tmp_path / "r"), "--negatives", "local", "--quiet"])
    err = capsys.readouterr().err
    assert "argument --negatives: 'local' is a data-parallel scope: give it as " \
           "--negatives-scope local" in err, err
    with pytest.raises(SystemExit):
        main(["train", "--out", str(tmp_path / "r"), "--negatives-scope", "all", "--quiet"])
    assert "argument --negatives-scope: invalid choice: 'all'" in capsys.readouterr().err


def _to_old_keys(options):
    """Training options as written when "negatives" held the data-parallel scope."""
    old = {k: v for k, v in options.items() if k not in ("negatives", "negatives_scope")}
    old["negatives"] = options["negatives_scope"]
    return old


@pytest.mark.parametrize("compare", [False, True])
def test_a_run_written_with_the_old_key_resumes(tmp_path, capsys, one_thread, compare):
    data, out = save_data(tmp_path / "x.npy"), tmp_path / "run"
    extra = ("--compare-vae",) if compare else ()
    assert train(out, data, "--negatives-scope", "local", *extra) == 0
    runs = [out / "infomax", out / "vae"] if compare else [out]
    for path in [out] + (runs if compare else []):  # config.json files
        config = json.loads((path / "config.json").read_text())
        config["train"] = _to_old_keys(config["train"])
        (path / "config.json").write_text(json.dumps(config))
    for run in runs:
        rewrite_checkpoint(run / "checkpoint.pt",
                           lambda state: state.update(config=_to_old_keys(state["config"])))
    capsys.readouterr()
    assert main(["train", "--resume", "--out", str(out), "--epochs", "2", "--quiet",
                 "--no-plots", "--negatives-scope", "local"]) == 0
    saved = json.loads((out / "config.json").read_text())["train"]
    assert (saved["negatives"], saved["negatives_scope"]) == ("shuffle", "local")
    for run in runs:
        state = torch.load(run / "checkpoint.pt", weights_only=True)
        assert state["epoch"] == 2
        assert (state["config"]["negatives"], state["config"]["negatives_scope"]) == \
            ("shuffle", "local")
