"""The kernel activations as the tests run them, read from the one table
(``infomax_ext.activations.ACTIVATIONS``): every name the kernels run, each activation that takes
a parameter at a value other than its default."""
from infomax_ext.activations import ACTIVATIONS, KERNEL_ACTIVATIONS


def param_of(name: str) -> float:
    """The parameter the tests give activation ``name``: 0.0 when it takes none, else 0.7 (0.3
    should 0.7 be its default)."""
    default = ACTIVATIONS[name].default
    if ACTIVATIONS[name].param is None:
        return 0.0
    return 0.7 if default != 0.7 else 0.3


KERNEL_CASES = [(name, param_of(name)) for name in KERNEL_ACTIVATIONS]
