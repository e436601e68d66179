# The op test files (every kernel, its checks, opcheck, autocast, the package's loading), run
# against each built wheel: sourced by scripts/wheel_check.sh and scripts/cuda_check.sh (which
# adds tests/test_cuda.py). A new op's test file goes here.
OP_TESTS="tests/test_ops.py tests/test_bound_op.py tests/test_infonce_op.py tests/test_bernoulli_op.py tests/test_critic_mlp.py tests/test_mixed_precision.py tests/test_package.py"
