"""Data-parallel training on torch.distributed: 2 gloo processes on localhost, started here.

One spawn (the ``ranks`` fixture) runs every in-process check on 2 ranks of 32 rows and saves
what each rank computed; the tests compare it with the same computation in this process on the
64-row batch. The torchrun tests start ``python -m torch.distributed.run`` on the CLI.
"""
import contextlib
import datetime
import faulthandler
import gc
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import infomax_ext as im
from infomax_ext import distributed
from infomax_ext.data import load_file, train_val_split
from infomax_ext.mutual_info import shuffled_bound
from infomax_ext.trainer import TrainConfig, Trainer, derived_seed

WORLD, N, DX, DZ = 2, 64, 5, 3
ROWS = N // WORLD
TIMEOUT = 120  # seconds for a whole spawn; a hang fails the test instead of the suite
CASES = [(1, False, False), (1, True, False), (2, False, False), (2, True, False), (2, False, True)]
STEPS = [  # train_step settings of the exactness runs
    dict(shuffled_grad=True, infomaxloss_kwargs={"n_samples": 2, "alpha": 5.0}),
    dict(reuse_forward=True, infomaxloss_kwargs={"alpha": 5.0}),
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_main(rank, fn, port, args):
    faulthandler.enable(all_threads=True)  # a rank killed by a signal shows its Python stacks
    torch.set_num_threads(1)
    distributed.import_before_init()  # else destroy_process_group leaves gloo's threads running
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=WORLD, timeout=datetime.timedelta(seconds=60))
    try:
        fn(rank, *args)
    finally:
        dist.destroy_process_group()
        # Free the group (joining its gloo threads) while the interpreter runs: reference cycles
        # (a caught exception's frames) may still hold it.
        gc.collect()


def spawn(fn, *args):
    """``fn(rank, *args)`` in WORLD fresh processes joined in a gloo group; a rank's exception
    fails the caller with its traceback; processes still running after TIMEOUT are killed."""
    start(_rank_main, fn, free_port(), args)


def start(main, fn, *args):
    """``main(rank, fn, *args)`` in WORLD fresh processes, as :func:`spawn` runs them."""
    context = mp.start_processes(main, args=(fn, *args), nprocs=WORLD, join=False,
                                 start_method="spawn")
    deadline = time.monotonic() + TIMEOUT
    try:
        while not context.join(timeout=1.0):
            if time.monotonic() > deadline:
                pytest.fail(f"{fn.__name__} did not finish in {TIMEOUT} s")
    finally:
        for p in context.processes:
            if p.is_alive():
                p.kill()
                p.join()


# ----------------------------------------------------------------------------- shared setup


def chain():
    torch.manual_seed(1)
    return im.MutualInfoChain.from_sizes(DX, DZ, [16, 8], ["tanh", "relu"]).double()


def global_batch(s):
    """x (N, DX) and codes z (S, N, DZ), float64."""
    g = torch.Generator().manual_seed(2)
    return (torch.randn(N, DX, generator=g, dtype=torch.float64),
            torch.randn(s, N, DZ, generator=g, dtype=torch.float64))


def share(t, rank):
    """Rank ``rank``'s rows of ``t``, whose second-to-last dimension is the global batch."""
    return t[..., rank * ROWS:(rank + 1) * ROWS, :]


def bound_and_grads(mi, x, z, s, shuffled_grad, frozen, group):
    """The bound of ``mi`` on x and codes z (S, n, d) through :func:`shuffled_bound` (the
    variational_mutual_info form for S = 1), and its gradients for the chain and for z."""
    mi.requires_grad_(not frozen)
    z = z.clone().requires_grad_(True)
    if s == 1:
        bound = im.variational_mutual_info(mi, x, z[0], seed=7, shuffled_grad=shuffled_grad,
                                           process_group=group)
    else:
        bound = shuffled_bound(mi, x, z.reshape(-1, DZ), s, 7, shuffled_grad=shuffled_grad,
                               process_group=group).bound
    params = [p for p in mi.parameters() if p.requires_grad]
    grads = torch.autograd.grad(bound, params + [z])
    return bound.detach(), list(grads[:-1]), grads[-1]


class NoiseVAE(im.VAE):
    """A VAE whose reparameterisation noise comes from its own generator: every call draws
    the noise of the whole batch, (S, world_size * n, d), and uses this rank's rows, so ranks
    together see exactly the noise of the single-process run."""

    def __init__(self, encoder, decoder, rank=0, world=1):
        super().__init__(encoder, decoder)
        self.rank, self.world = rank, world
        self.generator = torch.Generator().manual_seed(5)

    def sample_latent(self, encoder_output, n_samples=1):
        mu, logsigma = encoder_output
        n = mu.shape[0]
        eps = torch.randn((n_samples, self.world * n, mu.shape[1]), generator=self.generator,
                          dtype=mu.dtype)[:, self.rank * n:(self.rank + 1) * n]
        z = mu + eps * torch.exp(logsigma)
        return z[0] if n_samples == 1 else z


def model(rank=0, world=1):
    torch.manual_seed(3)
    encoder = im.JointGaussianLogEncoder.from_sizes(DX, DZ, [16], ["tanh"])
    decoder = im.BernoulliDecoder.from_sizes(DX, DZ, [16], ["tanh"])
    return im.InfoMaxVAE(NoiseVAE(encoder, decoder, rank, world), chain()).double()


def data_x():
    return torch.rand(N, DX, generator=torch.Generator().manual_seed(4), dtype=torch.float64)


def train(m, x, settings, group=None, steps=3, negatives_scope="global"):
    """``steps`` train_steps of ``m`` on x with Adam; the shuffle seeds come from torch's global
    generator, seeded with 11 here and on rank 0 (rank 1 draws other seeds, which must not
    matter)."""
    opt = {"vae": torch.optim.Adam(m.vae.parameters(), 1e-2),
           "mi": torch.optim.Adam(m.mi.parameters(), 1e-2)}
    torch.manual_seed(11 if group is None or dist.get_rank() == 0 else 12)
    losses = [im.train_step(m, x, opt, loss_return=True, process_group=group,
                            negatives_scope=negatives_scope,
                            **settings) for _ in range(steps)]
    return {k: v.detach().clone() for k, v in m.state_dict().items()}, losses


def model_bounds(m, x, group=None):
    """The MI estimates of ``m(x, latent=True)`` and of ``variational_mutual_info(m, x)``."""
    with torch.no_grad():
        return [m(x, latent=True, seed=9, process_group=group).mi,
                im.variational_mutual_info(m, x, seed=10, process_group=group)]


def mismatch_messages(rank, group):
    """The errors of calls whose shapes or dtypes differ between the ranks."""
    mi, (x, z) = chain(), global_batch(1)
    x, z = share(x, rank), share(z, rank)[0]
    calls = {
        "batch size": lambda: im.variational_mutual_info(
            mi, x[:ROWS - 2 * rank], z[:ROWS - 2 * rank], seed=1, process_group=group),
        "latent width": lambda: distributed.agree_on_batch(
            group, ROWS, torch.zeros(ROWS, DZ + rank, dtype=torch.float64), 1),
        "dtype": lambda: im.variational_mutual_info(
            mi.to(torch.float64 if rank == 0 else torch.float32), x.to(mi.mlp[0].weight.dtype),
            z.to(mi.mlp[0].weight.dtype), seed=1, process_group=group),
        "parameters": lambda: distributed.average_gradients(
            [torch.nn.Parameter(torch.zeros(3 + rank))], group),
    }
    messages = {}
    for name, call in calls.items():
        try:
            call()
        except distributed.DistributedMismatchError as exc:
            messages[name] = str(exc)
    return messages


def trainer_run(rank, group, path):
    """One epoch of a data-parallel Trainer on memory-mapped data, recording the rows read."""
    data = load_file(path, mmap=True)
    read = []
    real = type(data.x)._read

    def recording(self, index):
        if isinstance(index, torch.Tensor):  # a batch's rows (the data digest reads slices)
            read.append(np.asarray(self.rows[index.numpy()]))
        return real(self, index)

    type(data.x)._read = recording
    config = TrainConfig(latent_dim=2, encoder_neurons=[8], decoder_neurons=[8], mi_neurons=[8],
                         epochs=1, batch_size=16, seed=3)
    train_part, _ = train_val_split(data, 0.2, 0)
    trainer = Trainer.create(config, train_part.x, progress=False, process_group=group)
    history = trainer.fit()
    type(data.x)._read = real
    mismatch = None
    try:
        Trainer.create(TrainConfig(**{**config.to_dict(), "lr": 1e-3 * (rank + 1)}), train_part.x,
                       progress=False, process_group=group)
    except distributed.DistributedMismatchError as exc:
        mismatch = str(exc)
    return {"read": read, "history": history, "mismatch": mismatch,
            "rows": train_part.x.rows, "params": [p.detach().clone()
                                                    for p in trainer.model.parameters()]}


def worker(rank, out):
    from infomax_ext import critic_chain_op

    group = dist.group.WORLD
    results = {"bounds": {}}
    calls = []
    real_linear, real_chain = im.paired_linear_op.paired_linear, critic_chain_op.critic_chain

    def counting(real):
        def count(*args, **kwargs):
            calls.append(1)
            return real(*args, **kwargs)

        return count

    # the fused first layer serves every case: paired_linear, or the one-node chain critic_chain
    im.paired_linear_op.paired_linear = counting(real_linear)
    critic_chain_op.critic_chain = counting(real_chain)
    two_calls = im.mutual_info._two_call_bound
    im.mutual_info._two_call_bound = lambda *a: pytest.fail("the two-call path ran")
    for s, shuffled_grad, frozen in CASES:
        x, z = global_batch(s)
        calls.clear()
        results["bounds"][s, shuffled_grad, frozen] = (
            bound_and_grads(chain(), share(x, rank), share(z, rank), s, shuffled_grad, frozen,
                            group), len(calls))
    im.paired_linear_op.paired_linear = real_linear
    critic_chain_op.critic_chain = real_chain
    im.mutual_info._two_call_bound = two_calls
    results["steps"] = [train(model(rank, WORLD), share(data_x(), rank), settings, group)
                        for settings in STEPS]
    results["forward"] = model_bounds(model(rank, WORLD), share(data_x(), rank), group)
    sent = []
    real_shuffled_codes = distributed.shuffled_codes
    distributed.shuffled_codes = lambda *a: sent.append(1) or real_shuffled_codes(*a)
    results["local"] = train(model(rank, WORLD), share(data_x(), rank), STEPS[0], group,
                             steps=2, negatives_scope="local") + (len(sent),)
    distributed.shuffled_codes = real_shuffled_codes
    results["mismatch"] = mismatch_messages(rank, group)
    results["trainer"] = trainer_run(rank, group, out / "x.npy")
    torch.save(results, out / f"rank{rank}.pt")


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    out = tmp_path_factory.mktemp("ranks")
    np.save(out / "x.npy", np.random.default_rng(0).random((50, 6)).astype(np.float32))
    spawn(worker, out)
    return [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(WORLD)], out


# ----------------------------------------------------------------------------- (a) the bound


@pytest.mark.parametrize("s, shuffled_grad, frozen", CASES)
def test_whole_batch_bound_and_gradients_match_one_process(ranks, s, shuffled_grad, frozen):
    results, _ = ranks
    x, z = global_batch(s)
    bound, grads, grad_z = bound_and_grads(chain(), x, z, s, shuffled_grad, frozen, None)
    per_rank = [r["bounds"][s, shuffled_grad, frozen] for r in results]
    assert all(fused_calls > 0 for _, fused_calls in per_rank) or frozen
    got = [b for b, _ in per_rank]
    # the mean over ranks of each rank's bound (its rows' mean of the terms) is the bound
    torch.testing.assert_close(sum(b for b, _, _ in got) / WORLD, bound, rtol=0, atol=1e-10)
    # the rank average of the chain's gradients is the whole-batch gradient
    for k, g in enumerate(grads):
        torch.testing.assert_close(sum(r[1][k] for r in got) / WORLD, g, rtol=0, atol=1e-10)
    # each rank's codes get world_size times their whole-batch gradient
    torch.testing.assert_close(torch.cat([r[2] for r in got], dim=1), WORLD * grad_z,
                               rtol=0, atol=1e-10)
    assert grad_z.abs().sum() > 0


def test_the_shuffle_pairs_across_ranks():
    """Half the shuffled codes paired with a rank's rows lie with the other rank (so the test above
    compares a real exchange)."""
    perm = im.latent_permutation(N, 1, 7)
    assert 8 < int((perm[:ROWS] >= ROWS).sum()) < 24


# ----------------------------------------------------------------------------- (b) train_step


@pytest.mark.parametrize("k", range(len(STEPS)))
def test_train_steps_leave_the_single_process_parameters(ranks, k):
    results, _ = ranks
    want, losses = train(model(), data_x(), STEPS[k])
    got = [r["steps"][k][0] for r in results]
    for name, value in want.items():
        assert torch.equal(got[0][name], got[1][name]), name  # bit-identical on both ranks
        torch.testing.assert_close(got[0][name], value, rtol=0, atol=1e-10, msg=name)
    start = {k: v for k, v in model().state_dict().items()}
    assert any(not torch.equal(start[name], value) for name, value in want.items())
    # each rank's losses are its own rows'; their mean is the whole batch's
    for step in range(len(losses)):
        mean_mi = sum(r["steps"][k][1][step][1] for r in results) / WORLD
        assert abs(mean_mi - losses[step][1]) < 1e-10


def test_the_model_forms_average_to_the_whole_batch_estimate(ranks):
    results, _ = ranks
    want = model_bounds(model(), data_x())
    for k, value in enumerate(want):
        torch.testing.assert_close(sum(r["forward"][k] for r in results) / WORLD, value,
                                   rtol=0, atol=1e-10)


def test_local_negatives_send_no_codes_and_keep_ranks_identical(ranks):
    results, _ = ranks
    got = [r["local"] for r in results]
    assert [sent for _, _, sent in got] == [0, 0]
    assert all(torch.equal(got[0][0][name], got[1][0][name]) for name in got[0][0])
    global_params, _ = train(model(), data_x(), STEPS[0], steps=2)
    assert not all(torch.allclose(got[0][0][name], value)
                   for name, value in global_params.items())


# ----------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("name, words", [
    ("batch size", ["batch size", "rank 0 has 32", "rank 1 has 30"]),
    ("latent width", ["latent width", "rank 0 has 3", "rank 1 has 4"]),
    ("dtype", ["dtype of the latent codes", "rank 0 has float64", "rank 1 has float32"]),
    ("parameters", ["gradient averaging", "number of parameter elements", "rank 1 has 4"]),
])
def test_ranks_that_disagree_get_the_same_clear_error(ranks, name, words):
    results, _ = ranks
    messages = [r["mismatch"].get(name) for r in results]
    assert messages[0] is not None and messages[0] == messages[1]
    assert all(w in messages[0] for w in words), messages[0]


# ----------------------------------------------------------------------------- Trainer, mmap


def test_trainer_shards_each_global_batch_and_reads_only_its_rows(ranks):
    results, _ = ranks
    runs = [r["trainer"] for r in results]
    rows = runs[0]["rows"]
    order = torch.randperm(len(rows), generator=torch.Generator().manual_seed(
        derived_seed(3, 1, 1)))
    want = [[], []]
    for batch in order.split(16):  # 40 rows: 16, 16, 8 -> 8, 8, 4 per rank
        for r in range(WORLD):
            want[r].append(rows[batch[r * len(batch) // 2:(r + 1) * len(batch) // 2].numpy()])
    for r in range(WORLD):
        assert [list(a) for a in runs[r]["read"]] == [list(a) for a in want[r]]
    assert all(torch.equal(a, b) for a, b in zip(runs[0]["params"], runs[1]["params"]))
    # the logged losses are the all-reduced whole-batch ones: equal on both ranks
    assert [h["mi"] for h in runs[0]["history"]] == [h["mi"] for h in runs[1]["history"]]
    assert "training options" in runs[0]["mismatch"] and runs[0]["mismatch"] == runs[1]["mismatch"]


# ----------------------------------------------------------------------------- torchrun

TINY = ["--latent-dim", "2", "--encoder-neurons", "16", "--decoder-neurons", "16",
        "--mi-neurons", "16", "--eval-mi-steps", "10", "--no-plots", "--log-interval", "0"]


@pytest.fixture(scope="module")
def digits_npy(tmp_path_factory):
    """The digits as a .npy file (read memory-mapped by the CLI)."""
    from sklearn.datasets import load_digits

    path = tmp_path_factory.mktemp("data") / "digits.npy"
    np.save(path, (load_digits().data / 16).astype(np.float32))
    return path


@pytest.fixture
def torchrun():
    """``torchrun(*argv, extra=())`` starts ``torchrun --standalone --nproc-per-node 2 [extra]
    -m infomax_ext train argv`` in its own session; the session is killed when the test ends."""
    jobs = []

    def start(*argv, extra=()):
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                   "--nproc-per-node", str(WORLD), *extra, "-m", "infomax_ext", "train",
                   *map(str, argv)]
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        jobs.append(subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     text=True, env=env, start_new_session=True))
        return jobs[-1]

    yield start
    for job in jobs:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(job.pid, signal.SIGKILL)
        job.communicate()


def finish(job, timeout=TIMEOUT) -> str:
    """The job's output once it has ended (the test fails after ``timeout``)."""
    try:
        return job.communicate(timeout=timeout)[0]
    except subprocess.TimeoutExpired:
        pytest.fail(f"torchrun did not finish in {timeout} s")


def worker_pid(job, rank) -> int:
    """The pid of the job's worker of this rank (a child of torchrun whose environment says so)."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
                environ = (stat.parent / "environ").read_bytes().split(b"\0")
            except (OSError, IndexError, ValueError):
                continue
            if ppid == job.pid and f"RANK={rank}".encode() in environ:
                return int(stat.parent.name)
        time.sleep(0.2)
    pytest.fail(f"no worker of rank {rank} found")


def wait_for(path: Path, job, timeout=60):
    deadline = time.monotonic() + timeout
    while not path.exists():
        if job.poll() is not None or time.monotonic() > deadline:
            pytest.fail(f"{path} was not written")
        time.sleep(0.05)


def checkpoint_loads(run, data, epoch):
    """The trainer of the run's checkpoint, at ``epoch`` or later, on the data's training split."""
    train_part, _ = train_val_split(load_file(data), 0.2, 0)
    trainer = Trainer.from_checkpoint(run / "checkpoint.pt", train_part.x, progress=False)
    assert trainer.epoch >= epoch and trainer.history[-1]["epoch"] == trainer.epoch
    return trainer


def epochs_logged(run):
    return [json.loads(line)["epoch"] for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_torchrun_writes_one_run_directory_and_resumes(tmp_path, digits_npy, torchrun):
    run = tmp_path / "run"
    output = finish(torchrun("--data", digits_npy, "--out", run, "--epochs", 2, *TINY))
    assert "wrote" in output, output
    config = json.loads((run / "config.json").read_text())
    assert config["distributed"] == {"world_size": 2, "backend": "gloo"}
    assert config["train"]["negatives_scope"] == "global"
    assert config["train"]["negatives"] == "shuffle"
    assert epochs_logged(run) == [1, 2]
    assert output.count("infomax epoch 2/2:") == 1  # rank 0 alone prints
    trainer = checkpoint_loads(run, digits_npy, 2)
    assert len(torch.load(run / "checkpoint.pt", weights_only=True)["rank_rng"]) == 2
    assert im.InfoMaxVAE.load(run / "model").vae.encoder.config["n_latent"] == 2
    assert json.loads((run / "metrics.json").read_text())["epochs"] == 2

    output = finish(torchrun("--resume", "--out", run, "--epochs", 3, *TINY))
    assert "resuming at epoch 3 of 3" in output, output
    assert epochs_logged(run) == [1, 2, 3]
    assert checkpoint_loads(run, digits_npy, 3).history[:2] == trainer.history


def test_a_killed_rank_fails_the_job_naming_it_and_keeps_the_checkpoint(tmp_path, digits_npy,
                                                                          torchrun):
    run = tmp_path / "run"
    job = torchrun("--data", digits_npy, "--out", run, "--epochs", 500, *TINY)
    rank1 = worker_pid(job, 1)
    wait_for(run / "checkpoint.pt", job)
    os.kill(rank1, signal.SIGKILL)
    output = finish(job)
    assert job.returncode != 0
    root_cause = output[output.index("Root Cause"):]
    assert re.search(r"rank\s*: 1 \(local_rank: 1\)\s+exitcode\s*: -9", root_cause), root_cause
    checkpoint_loads(run, digits_npy, 1)


def test_max_restarts_resume_from_the_last_checkpoint(tmp_path, digits_npy, torchrun):
    run = tmp_path / "run"
    job = torchrun("--data", digits_npy, "--out", run, "--epochs", 6, *TINY,
                   extra=["--max-restarts", "1"])
    rank1 = worker_pid(job, 1)
    wait_for(run / "checkpoint.pt", job)  # after epoch 1 of 6: rank 1 is still training
    os.kill(rank1, signal.SIGKILL)
    output = finish(job)
    assert re.search(r"resuming at epoch [2-6] of 6", output), output
    assert epochs_logged(run) == [1, 2, 3, 4, 5, 6]
    assert f"wrote {run}" in output, output
    # The restarted job resumed and finished the run. Its exit status is 0, except when a
    # restarted gloo worker aborts while the process exits ("terminate called without an active
    # exception", seen in about one run in four): then torchrun reports that signal, after the
    # run directory was written. Any other failure fails the test.
    if job.returncode != 0:
        assert "terminate called without an active exception" in output, output
        assert "exitcode  : -6" in output, output
