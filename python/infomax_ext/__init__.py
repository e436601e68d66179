"""infomax_ext: the InfoMax VAE for PyTorch, with fused C++/CUDA kernels for the MI bound.

Importing the package loads the compiled ops (``torch.ops.infomax_ext.*``); when they cannot
load, everything runs on the pure-PyTorch path and a warning says why. ``backend()`` tells which
path serves a device.
"""
from ._ops import (
    PATHS,
    backend,
    extension_available,
    extension_error,
    inverse_permutation,
    seeded_permutation,
    current_path,
    use_path,
    use_reference_path,
)
# Importing each op module registers its op's fake kernels and autograd formula (bound_op's
# through .bounds below; critic_chain_op holds the one-node chain, no op of its own).
from . import critic_chain_op  # noqa: F401
from .critic_head_op import critic_head
from .critic_mlp_op import critic_mlp
from .nwj_bound_op import nwj_bound
from .paired_first_layer_op import paired_first_layer
from .paired_linear_op import paired_linear
from ._version import __version__ as __version__
from .activations import Activation, identity
from .bounds import BOUNDS, Bound
from .build_info import build_info
from .explain import PathExplanation, explain_path
from .infomax import (
    InfoMaxTerms,
    InfoMaxVAE,
    InfoMaxVAEOutput,
    infomax_terms,
    infomaxloss,
    load_model,
    miloss,
    save_model,
)
from .losses import InfoMaxVAELoss, MutualInfoLoss
from .training_step import train_step
from .preprocessing import Preprocessing
from .mutual_info import (
    DataHalfCache,
    MIScores,
    MutualInfoChain,
    PairedBound,
    latent_permutation,
    paired_mutual_info,
    shuffle_latent,
    shuffled_bound,
    variational_mutual_info,
)
from .trainer import TrainConfig, Trainer, fit
from .vae import (
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

# A literal list, so that type checkers see what the package exports (tests/test_typing.py
# checks that it names every public name imported above).
__all__ = [
    "Activation", "BOUNDS", "BernoulliDecoder", "BernoulliOutput", "Bound", "DataHalfCache",
    "GaussianLogOutput", "GaussianOutput", "InfoMaxTerms", "InfoMaxVAE", "InfoMaxVAELoss",
    "InfoMaxVAEOutput", "JointGaussianDecoder", "JointGaussianEncoder", "JointGaussianLogDecoder",
    "JointGaussianLogEncoder", "MIScores", "MutualInfoChain", "MutualInfoLoss", "PATHS",
    "PairedBound", "PathExplanation", "Preprocessing", "SimpleGaussianDecoder",
    "SimpleGaussianOutput", "SplitGaussianDecoder", "SplitGaussianLogDecoder", "TrainConfig",
    "Trainer", "VAE", "VAEOutput", "backend", "build_info", "current_path",
    "decoder_loglikelihood", "encoder_kl", "encoder_logposterior", "explain_path",
    "extension_available", "extension_error", "fit", "identity", "infomax_terms", "infomaxloss",
    "inverse_permutation", "latent_permutation", "load_model", "miloss", "module_from_config",
    "nwj_bound", "critic_head", "critic_mlp", "paired_first_layer", "paired_linear",
    "paired_mutual_info", "reparameterize", "save_model", "seeded_permutation", "shuffle_latent",
    "shuffled_bound", "spherical_logprior", "train_step", "use_path", "use_reference_path",
    "variational_mutual_info",
]
