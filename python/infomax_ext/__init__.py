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
    nwj_bound,
    nwj_head,
    nwj_mlp,
    paired_first_layer,
    paired_linear,
    seeded_permutation,
    current_path,
    use_path,
    use_reference_path,
)
from ._version import __version__
from .activations import Activation, identity
from .build_info import build_info
from .infomax import (
    InfoMaxTerms,
    InfoMaxVAE,
    InfoMaxVAEOutput,
    infomax_terms,
    infomaxloss,
    load_model,
    miloss,
    save_model,
    train_step,
)
from .losses import InfoMaxVAELoss, MutualInfoLoss
from .preprocessing import Preprocessing
from .mutual_info import (
    DataHalfCache,
    MIScores,
    MutualInfoChain,
    PairedBound,
    latent_permutation,
    paired_mutual_info,
    shuffle_latent,
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

__all__ = [name for name in dir() if not name.startswith("_")]
