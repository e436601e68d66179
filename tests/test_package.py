"""The package surface: every documented name, the active path, the fallback when _C is missing."""
import subprocess
import sys
import textwrap

import torch

import infomax_ext as im

DOCUMENTED = [
    "MutualInfoChain", "InfoMaxVAE", "VAE", "JointGaussianLogEncoder", "JointGaussianEncoder",
    "BernoulliDecoder", "SimpleGaussianDecoder", "JointGaussianLogDecoder", "SplitGaussianLogDecoder",
    "JointGaussianDecoder", "SplitGaussianDecoder", "reparameterize", "decoder_loglikelihood",
    "encoder_kl", "spherical_logprior", "encoder_logposterior", "shuffle_latent",
    "variational_mutual_info", "miloss", "infomaxloss", "train_step", "nwj_bound",
]


def test_every_documented_name_is_exported():
    missing = [name for name in DOCUMENTED if not hasattr(im, name)]
    assert not missing
    assert callable(im.MutualInfoChain.from_sizes) and callable(im.JointGaussianLogEncoder.from_sizes)


def test_backend_reports_the_compiled_path():
    assert im.extension_available() and im.extension_error() is None
    assert im.backend("cpu") == "compiled"
    assert hasattr(torch.ops.infomax_ext, "paired_first_layer")


def test_package_without_compiled_module_warns_once_and_still_works():
    script = textwrap.dedent(
        """
        import sys, warnings
        import importlib.abc

        class Block(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path, target=None):
                if name == "infomax_ext._C":
                    raise ImportError("blocked for the test")
                return None

        sys.meta_path.insert(0, Block())
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            import infomax_ext as im
            import infomax_ext  # a second import does not warn again
        messages = [str(w.message) for w in caught if "infomax_ext" in str(w.message)]
        assert len(messages) == 1 and "blocked for the test" in messages[0], messages
        assert not im.extension_available() and im.backend() == "reference"
        import torch
        torch.manual_seed(0)
        mi = im.MutualInfoChain.from_sizes(6, 2, [8], [torch.relu])
        x, z = torch.randn(10, 6), torch.randn(10, 2)
        got = im.variational_mutual_info(mi, x, z, seed=1)
        zs = im.shuffle_latent(z, seed=1)
        want = mi(x, z).mean() - torch.exp(mi(x, zs) - 1).mean()
        # float32 rounding scales with the terms summed: the chain with |weights| on |inputs|
        # bounds every sum inside it (ReLU passes non-negative values unchanged).
        import copy
        absolute = copy.deepcopy(mi)
        with torch.no_grad():
            for p in absolute.parameters():
                p.abs_()
            joint, marg = absolute(x.abs(), z.abs()), absolute(x.abs(), zs.abs())
            scale = joint.mean() + (torch.exp(mi(x, zs) - 1) * (1 + marg)).mean()
        assert abs(got - want) <= 16 * torch.finfo(torch.float32).eps * scale, (got, want, scale)
        print("fallback ok")
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "fallback ok" in done.stdout


def test_seeded_permutation_is_the_same_on_the_reference_path():
    compiled = im.seeded_permutation(500, 77)
    with im.use_reference_path():
        assert torch.equal(compiled, im.seeded_permutation(500, 77))
