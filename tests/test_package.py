"""The package surface: every documented name, the active path, the fallback when _C is missing,
and what a binary that cannot load says."""
import os
import subprocess
import sys
import textwrap

import pytest

import torch

import infomax_ext as im

DOCUMENTED = [
    "MutualInfoChain", "InfoMaxVAE", "VAE", "JointGaussianLogEncoder", "JointGaussianEncoder",
    "BernoulliDecoder", "SimpleGaussianDecoder", "JointGaussianLogDecoder", "SplitGaussianLogDecoder",
    "JointGaussianDecoder", "SplitGaussianDecoder", "reparameterize", "decoder_loglikelihood",
    "encoder_kl", "spherical_logprior", "encoder_logposterior", "shuffle_latent",
    "variational_mutual_info", "miloss", "infomaxloss", "train_step", "nwj_bound",
    "use_path", "current_path", "PATHS", "use_reference_path", "DataHalfCache", "save_model",
    "load_model",
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
    script = """
        import warnings
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
    done = run_without_compiled_module(script)
    assert done.returncode == 0, done.stderr
    assert "fallback ok" in done.stdout


def run_without_compiled_module(script, error="ImportError('blocked for the test')", env=None):
    """Runs ``script`` in a fresh interpreter in which importing infomax_ext._C raises ``error``
    (an ImportError, or the OSError of a binary built for another torch)."""
    prelude = textwrap.dedent(
        f"""
        import sys
        import importlib.abc

        class Block(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path, target=None):
                if name == "infomax_ext._C":
                    raise {error}
                return None

        sys.meta_path.insert(0, Block())
        """
    )
    environment = {k: v for k, v in os.environ.items() if k != "INFOMAX_EXT_REQUIRE_COMPILED"}
    environment.update(env or {})
    return subprocess.run([sys.executable, "-c", prelude + textwrap.dedent(script)],
                          capture_output=True, text=True, timeout=120, env=environment)


def test_build_info_describes_the_compiled_module():
    info = im.build_info()
    assert set(info) == {"version", "torch", "stable_abi_target", "cuda", "cuda_archs", "compiler"}
    assert info["version"] == im.__version__
    # Built against a torch at least as new as the stable-ABI target it promises to load on.
    built = tuple(int(p) for p in info["torch"].split("+")[0].split(".")[:2])
    target = tuple(int(p) for p in info["stable_abi_target"].split("."))
    assert target == (2, 10) and built >= target
    running = tuple(int(p) for p in torch.__version__.split("+")[0].split(".")[:2])
    assert running >= target
    assert bool(info["cuda"]) == bool(info["cuda_archs"])
    assert info["compiler"]


def test_a_binary_that_cannot_load_names_both_torches_and_what_to_install():
    script = """
        import warnings
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            import infomax_ext as im
        (message,) = [str(w.message) for w in caught if "infomax_ext" in str(w.message)]
        print(message)
    """
    done = run_without_compiled_module(
        script, error="OSError('_C.abi3.so: undefined symbol: torch_new_feature')")
    assert done.returncode == 0, done.stderr
    message = done.stdout
    info = im.build_info()
    assert "undefined symbol: torch_new_feature" in message
    assert f"built against torch {info['torch']}" in message
    assert f"stable ABI of torch >= {info['stable_abi_target']}" in message
    assert f"the running torch is torch {torch.__version__}" in message
    assert f"Install torch >= {info['stable_abi_target']}" in message
    assert "INFOMAX_EXT_REQUIRE_COMPILED=1" in message


@pytest.mark.parametrize("value, fails", [("1", True), ("0", False)])
def test_require_compiled_turns_the_fallback_into_an_import_error(value, fails):
    done = run_without_compiled_module("import infomax_ext", env={"INFOMAX_EXT_REQUIRE_COMPILED": value})
    if fails:
        assert done.returncode != 0
        assert "ImportError: infomax_ext: INFOMAX_EXT_REQUIRE_COMPILED is set" in done.stderr
        assert "blocked for the test" in done.stderr
    else:
        assert done.returncode == 0, done.stderr


def test_seeded_permutation_is_the_same_on_the_reference_path():
    compiled = im.seeded_permutation(500, 77)
    with im.use_reference_path():
        assert torch.equal(compiled, im.seeded_permutation(500, 77))


def _package_imports() -> dict:
    """For each module of the package, the package modules it imports, at module level or inside
    functions (read from the source, so an import a call would make counts too)."""
    import ast
    import pathlib

    root = pathlib.Path(im.__file__).parent
    modules = {path.stem: path for path in root.glob("*.py") if path.stem != "__init__"}
    graph = {}
    for name, path in modules.items():
        found = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets = []
            if isinstance(node, ast.ImportFrom) and node.level == 1:
                targets = [node.module] if node.module else [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("infomax_ext."):
                targets = [node.module.split(".")[1]]
            elif isinstance(node, ast.Import):
                targets = [a.name.split(".")[1] for a in node.names
                           if a.name.startswith("infomax_ext.")]
            found |= {t.split(".")[0] for t in targets} & set(modules)
        graph[name] = found - {name}
    return graph


def test_no_import_cycle_among_the_modules():
    graph = _package_imports()
    assert graph["serialization"] <= {"data"}  # files only: nothing from the model modules
    state = {}  # 1: on the current path, 2: done

    def visit(name, path):
        state[name] = 1
        for other in sorted(graph[name]):
            if state.get(other) == 1:
                cycle = path[path.index(other):] + [other]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if other not in state:
                visit(other, path + [other])
        state[name] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])


def test_compiled_ops_list_names_every_op_of_ops_cpp():
    """_ops.COMPILED_OPS (what a loaded build must define) is the op list of csrc/ops.cpp."""
    import re
    from pathlib import Path

    from infomax_ext import _ops

    source = Path(__file__).resolve().parents[1] / "csrc" / "ops.cpp"
    if not source.exists():
        pytest.skip("no source tree beside the tests")
    defined = re.findall(r'"([a-z_0-9]+)\(', source.read_text())
    assert sorted(defined) == sorted(_ops.COMPILED_OPS)


def test_a_build_lacking_an_op_is_refused_by_name(monkeypatch):
    from infomax_ext import _ops

    monkeypatch.setattr(_ops, "COMPILED_OPS", _ops.COMPILED_OPS + ("no_such_op",))
    with pytest.raises(ImportError, match="lacks the ops no_such_op"):
        _ops._check_compiled_ops()
