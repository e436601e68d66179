"""Processes of a data-parallel group that disagree, and processes that stop answering.

One spawn of 2 gloo processes (the ``ranks`` fixture) runs every disagreement in turn and saves
what each rank saw: the same :class:`DistributedMismatchError` on both ranks, never a gloo
abort. The command tests start ``python -m infomax_ext train`` as two ranks by hand (RANK,
WORLD_SIZE, MASTER_ADDR, MASTER_PORT: what torchrun sets), so each rank can get its own options
and be stopped or killed alone.
"""
import datetime
import gc
import json
import os
import signal
import subprocess
import sys
import time
import weakref

import numpy as np
import pytest
import torch
import torch.distributed as dist

import infomax_ext as im
from infomax_ext import distributed, distributed_step
from infomax_ext.checkpoint import write_checkpoint
from infomax_ext.data import load_file
from infomax_ext.distributed_failures import is_lost_contact, lost_contact
from infomax_ext.trainer import TrainConfig, Trainer, TrainingError
from test_distributed import (ROWS, STEPS, TINY, WORLD, chain, data_x, digits_npy,  # noqa: F401
                              free_port, global_batch, model, share, spawn, start, train,
                              wait_for)


def caught(call):
    """The message of the DistributedMismatchError ``call()`` raises (None if it returns)."""
    try:
        call()
    except distributed.DistributedMismatchError as exc:
        return str(exc)
    return None


def grad_param(dtype):
    p = torch.nn.Parameter(torch.zeros(3, dtype=dtype))
    p.grad = torch.ones_like(p)
    return p


def _reopen():
    if dist.get_rank() == 1:
        raise FileNotFoundError("no data file on this machine")
    return "mapped"


class MissingOnRank1:
    """Unpickles on rank 0 only, as a memory-mapped file that rank 1's machine lacks."""

    def __reduce__(self):
        return _reopen, ()


@torch.no_grad()
def nudge(p):
    p.add_(1.0)


def step_with(m, x, group, optimizer, **settings):
    """One train_step of ``m`` whose VAE optimizer is ``optimizer(**settings)``."""
    opt = {"vae": optimizer(m.vae.parameters(), **settings),
           "mi": torch.optim.Adam(m.mi.parameters(), 1e-2)}
    im.train_step(m, x, opt, process_group=group)


def disagreements(rank, group, out):
    """Each call's error message on this rank; every call disagrees between the two ranks."""
    x = share(data_x(), rank)
    mi, (xb, z) = chain(), global_batch(1)
    xb, z = share(xb, rank), share(z, rank)[0].requires_grad_(True)
    single = model(rank, WORLD)
    first_layer = next(single.vae.parameters())
    calls = {
        # models of other dtypes, with local negatives (no bound exchange runs before averaging)
        "model dtype": lambda: train(model(rank, WORLD).to(torch.float64 if rank == 0 else
                                                           torch.float32),
                                     x, STEPS[0], group, steps=1, negatives_scope="local"),
        "reuse_forward": lambda: train(model(rank, WORLD), x, dict(reuse_forward=rank == 0),
                                       group, steps=1),
        "bound": lambda: train(model(rank, WORLD), x,
                               dict(bound="nwj" if rank == 0 else "js"), group, steps=1),
        "negatives": lambda: train(model(rank, WORLD), x,
                                   dict(negatives="shuffle" if rank == 0 else "all"), group,
                                   steps=1),
        "negatives_scope": lambda: train(model(rank, WORLD), x, STEPS[0], group, steps=1,
                                         negatives_scope="global" if rank == 0 else "local"),
        "shuffled_grad": lambda: im.variational_mutual_info(
            mi, xb, z, seed=1, shuffled_grad=rank == 1, process_group=group),
        "collectives": lambda: (distributed.average_gradients([grad_param(torch.float64)], group)
                                if rank == 0 else distributed.agree_on_batch(group, ROWS, z, 1)),
        "gradient dtype": lambda: distributed.average_gradients(
            [grad_param(torch.float64 if rank == 0 else torch.float32)], group),
        "data": lambda: Trainer.create(
            TrainConfig(latent_dim=2, encoder_neurons=[4], decoder_neurons=[4], mi_neurons=[4],
                        epochs=1, batch_size=8), load_file(out / f"x{rank}.npy", mmap=True).x,
            progress=False, process_group=group),
        "unpickle": lambda: distributed.from_rank0(group, MissingOnRank1),
        # what the step does to equal weights differs: they would drift apart unseen
        "learning rate": lambda: step_with(model(rank, WORLD), x, group,
                                           torch.optim.Adam, lr=1e-2 * (rank + 1)),
        "optimizer class": lambda: step_with(model(rank, WORLD), x, group,
                                             torch.optim.Adam if rank == 0 else torch.optim.AdamW),
        "loss weight": lambda: train(model(rank, WORLD), x,
                                     dict(infomaxloss_kwargs={"alpha": 5.0 + rank}), group,
                                     steps=1),
        # weights changed on rank 1 alone after a step: refused, naming the parameter
        "weights changed": lambda: (train(single, x, STEPS[0], group, steps=1),
                                    rank == 1 and nudge(first_layer),
                                    train(single, x, STEPS[0], group, steps=1)),
    }
    return {name: caught(call) for name, call in calls.items()}


def different_starts(rank, group):
    """Two train_steps from weights that differ between the ranks (rank 1's moved by 0.5), and
    the number of parameter digests each step computed."""
    m = model(rank, WORLD)
    if rank == 1:
        with torch.no_grad():
            for p in m.parameters():
                p.add_(0.5)
    digests, real = [], distributed_step._tensor_digest
    distributed_step._tensor_digest = lambda t: digests.append(1) or real(t)
    counts = []
    for _ in range(2):
        before = len(digests)
        state, _ = train(m, share(data_x(), rank), STEPS[0], group, steps=1)
        counts.append(len(digests) - before)
    distributed_step._tensor_digest = real
    return state, counts


def worker(rank, out):
    group = dist.group.WORLD
    results = {"messages": disagreements(rank, group, out),
               "start": different_starts(rank, group)}
    torch.save(results, out / f"rank{rank}.pt")


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    out = tmp_path_factory.mktemp("agreement")
    for rank in range(WORLD):  # the same shape, other contents
        np.save(out / f"x{rank}.npy",
                np.random.default_rng(rank).random((40, 6)).astype(np.float32))
    spawn(worker, out)
    return [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]


@pytest.mark.parametrize("name, words", [
    ("model dtype", ["train_step's settings", "dtypes of the parameters", "rank 0 has float64",
                     "rank 1 has float32"]),
    ("reuse_forward", ["reuse_forward", "rank 0 has True", "rank 1 has False"]),
    ("bound", ["train_step's settings", "the losses' settings: MI bounds, negatives, weights",
               "rank 0 has digest", "rank 1 has digest"]),
    ("negatives", ["train_step's settings", "the losses' settings", "rank 0 has digest",
                   "rank 1 has digest"]),
    ("loss weight", ["train_step's settings", "the losses' settings", "rank 0 has digest",
                     "rank 1 has digest"]),
    ("learning rate", ["train_step's settings", "the optimizers' classes and settings",
                       "rank 0 has digest", "rank 1 has digest"]),
    ("optimizer class", ["the optimizers' classes and settings", "rank 0 has digest"]),
    ("negatives_scope", ["train_step's settings", "negatives_scope", "rank 0 has global",
                         "rank 1 has local"]),
    ("shuffled_grad", ["shuffled_grad", "rank 0 has none", "rank 1 has it"]),
    ("collectives", ["different collectives", "rank 0 at gradient averaging",
                     "rank 1 at the MI bound over the whole batch"]),
    ("gradient dtype", ["gradient averaging", "dtypes of the gradients", "rank 0 has float64",
                        "rank 1 has float32"]),
    ("data", ["training data (SHA-256", "rank 0: '", "rank 1: '"]),
    ("unpickle", ["rank 1 cannot take what rank 0 read or decided", "FileNotFoundError",
                  "no data file on this machine"]),
])
def test_ranks_that_disagree_get_the_same_error_not_an_abort(ranks, name, words):
    messages = [r["messages"][name] for r in ranks]
    assert messages[0] is not None and messages[0] == messages[1], messages
    assert all(w in messages[0] for w in words), messages[0]


def test_weights_changed_on_one_rank_after_a_step_are_refused_naming_the_parameter(ranks):
    messages = [r["messages"]["weights changed"] for r in ranks]
    assert messages[0] is not None and messages[0] == messages[1], messages
    name = next(iter(dict(model().named_parameters())))  # the first parameter, changed on rank 1
    assert f"parameter {name!r}" in messages[0] and "rank 1 differs from rank 0" in messages[0]


def test_different_starting_weights_become_rank_0s_on_the_first_step(ranks):
    states = [r["start"][0] for r in ranks]
    single = model()  # rank 0's start, the whole batch: the same two calls in one process
    train(single, data_x(), STEPS[0], steps=1)
    want, _ = train(single, data_x(), STEPS[0], steps=1)
    for name, value in want.items():
        assert torch.equal(states[0][name], states[1][name]), name
        torch.testing.assert_close(states[0][name], value, rtol=0, atol=1e-10, msg=name)
    # the weights are compared on the first step only (one digest per parameter), then trusted
    n_params = len(list(model().parameters()))
    assert [r["start"][1] for r in ranks] == [[n_params, 0]] * WORLD


def test_a_local_negatives_checkpoint_resumes_only_on_its_number_of_processes(tmp_path):
    config = TrainConfig(latent_dim=2, encoder_neurons=[4], decoder_neurons=[4], mi_neurons=[4],
                         epochs=1, batch_size=8, negatives_scope="local")
    x = torch.rand(24, 5, generator=torch.Generator().manual_seed(0))
    Trainer.create(config, x, run_dir=tmp_path, progress=False).fit()
    path = tmp_path / "checkpoint.pt"
    assert Trainer.from_checkpoint(path, x, progress=False).epoch == 1
    state = torch.load(path, weights_only=True)
    write_checkpoint({**state, "world_size": 2}, path)  # with its digest, as a trainer writes
    with pytest.raises(TrainingError,
                       match=r"negatives_scope='local' on 2 processes, now resumed on 1"):
        Trainer.from_checkpoint(path, x, progress=False)


def test_lost_contact_errors_are_recognised_and_described():
    timeout = RuntimeError("[/x/gloo/transport/tcp/unbound_buffer.cc:78] Timed out waiting "
                           "3000ms for recv operation to complete")
    closed = RuntimeError("[/x/gloo/transport/tcp/pair.cc:553] Connection closed by peer "
                          "[127.0.0.1]:40878")
    assert all(is_lost_contact(e) for e in (timeout, closed, dist.DistError("store")))
    assert not is_lost_contact(RuntimeError("mat1 and mat2 shapes cannot be multiplied"))
    assert not is_lost_contact(ValueError("Timed out waiting"))
    # without a roll-call store nobody is named, but the cause is
    assert "after --dist-timeout 7 s" in str(lost_contact(timeout, None, 7.0))
    assert "(its connection closed)" in str(lost_contact(closed, None, 7.0))


def _as_torchrun_rank(rank, fn, port, out):
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(WORLD), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    fn(rank, out)


def destroy_frees_the_group(rank, out):
    """Joins the group as the command does (init_from_env), creates an optimizer (which imports
    torch._dynamo, and with it modules that bind the default group in default argument
    values), runs a collective and destroys the group: is the group freed?"""
    pinning = distributed._MODULES_THAT_BIND_THE_GROUP[0]
    imported_before = pinning in sys.modules
    group = distributed.init_from_env("gloo", torch.device("cpu"),
                                      datetime.timedelta(seconds=60))
    freed = weakref.ref(group)
    del group
    torch.optim.Adam([torch.nn.Parameter(torch.ones(2))])
    dist.all_reduce(torch.ones(2))
    dist.destroy_process_group()
    gc.collect()
    torch.save({"imported before": imported_before, "freed": freed() is None},
               out / f"rank{rank}.pt")


def test_import_before_init_skips_a_module_this_torch_cannot_import(monkeypatch):
    monkeypatch.setattr(distributed, "_MODULES_THAT_BIND_THE_GROUP",
                        ("infomax_ext_no_such_module", "json"))
    monkeypatch.delitem(sys.modules, "json")
    distributed.import_before_init()
    assert "json" in sys.modules and "infomax_ext_no_such_module" not in sys.modules


def test_destroying_the_group_frees_it_so_no_gloo_thread_outlives_the_interpreter(tmp_path):
    # A group kept alive after destroy_process_group keeps its gloo threads, and one that
    # releases the last collective's tensors while the interpreter shuts down aborts the process
    # after its work succeeded (SIGABRT; docs/known-issues.md).
    start(_as_torchrun_rank, destroy_frees_the_group, free_port(), tmp_path)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD)]
    assert all(r["freed"] for r in ranks)
    # Without init_from_env's import the module would first come in through the optimizer,
    # after the group existed: the case this test is about (else it checks nothing).
    assert not any(r["imported before"] for r in ranks), "imported before the group existed"


# ----------------------------------------------------------------------------- the command


def launch(argvs, out_dir):
    """``python -m infomax_ext train argv`` for each rank's argv, as ranks of one job; each
    rank's stdout and stderr go to files in ``out_dir``."""
    port, jobs = free_port(), []
    for rank, argv in enumerate(argvs):
        env = {**os.environ, "OMP_NUM_THREADS": "1", "RANK": str(rank), "LOCAL_RANK": str(rank),
               "WORLD_SIZE": str(len(argvs)), "MASTER_ADDR": "127.0.0.1",
               "MASTER_PORT": str(port)}
        env.pop("TORCHELASTIC_RESTART_COUNT", None)
        log = open(out_dir / f"rank{rank}.log", "w")
        jobs.append(subprocess.Popen([sys.executable, "-m", "infomax_ext", "train",
                                      *map(str, argv)], stdout=log, stderr=subprocess.STDOUT,
                                     env=env, start_new_session=True))
    return jobs


@pytest.fixture
def ranks_of_a_job():
    jobs = []
    yield lambda argvs, out_dir: jobs.extend(launch(argvs, out_dir)) or jobs[-len(argvs):]
    for job in jobs:
        if job.poll() is None:
            os.killpg(job.pid, signal.SIGKILL)
        job.wait()


def ended(job, timeout=120) -> int:
    try:
        return job.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        pytest.fail(f"rank did not end in {timeout} s")


def test_resume_given_to_one_rank_only_is_the_same_error_on_every_rank(tmp_path, digits_npy,
                                                                      ranks_of_a_job):
    run = tmp_path / "run"
    argv = ["--data", digits_npy, "--out", run, "--epochs", 1, *TINY]
    jobs = ranks_of_a_job([argv, [*argv, "--resume"]], tmp_path)
    assert [ended(job) for job in jobs] == [1, 1]
    logs = [(tmp_path / f"rank{r}.log").read_text() for r in range(2)]
    errors = [line for log in logs for line in log.splitlines() if "error:" in line]
    assert len(errors) == 2 and errors[0] == errors[1], logs
    assert "--resume option" in errors[0] and "rank 0: False" in errors[0], errors[0]
    assert "rank 1: True" in errors[0] and "Traceback" not in "".join(logs)
    assert not run.exists()


def test_a_stopped_rank_ends_the_job_after_dist_timeout_naming_it(tmp_path, digits_npy,
                                                                  ranks_of_a_job):
    run = tmp_path / "run"
    argv = ["--data", digits_npy, "--out", run, "--epochs", 500, "--dist-timeout", 3, *TINY]
    rank0, rank1 = ranks_of_a_job([argv, argv], tmp_path)
    wait_for(run / "checkpoint.pt", rank0)
    os.kill(rank1.pid, signal.SIGSTOP)
    stopped = time.monotonic()
    assert ended(rank0, timeout=60) == 1
    assert time.monotonic() - stopped < 30
    log = (tmp_path / "rank0.log").read_text()
    error = [line for line in log.splitlines() if "error:" in line]
    assert len(error) == 1 and "Traceback" not in log, log
    assert "rank 1 did not answer" in error[0] and "--dist-timeout 3 s" in error[0], error[0]
    assert json.loads((run / "config.json").read_text())["distributed"]["world_size"] == 2


def test_when_rank_0_dies_the_others_report_lost_contact_in_one_line(tmp_path, digits_npy,
                                                                    ranks_of_a_job):
    run = tmp_path / "run"
    argv = ["--data", digits_npy, "--out", run, "--epochs", 500, "--negatives-scope", "local",
            *TINY]
    rank0, rank1 = ranks_of_a_job([argv, argv], tmp_path)
    wait_for(run / "checkpoint.pt", rank0)
    os.kill(rank0.pid, signal.SIGKILL)
    assert ended(rank1, timeout=60) == 1
    log = (tmp_path / "rank1.log").read_text()
    error = [line for line in log.splitlines() if "error:" in line]
    assert len(error) == 1 and "Traceback" not in log, log
    assert "rank 1 lost contact" in error[0] and "last checkpoint is intact" in error[0], error[0]

    # the run's objective depends on its 2 processes: one process may not resume it
    resumed = subprocess.run([sys.executable, "-m", "infomax_ext", "train", "--resume", "--out",
                              run, *TINY], capture_output=True, text=True,
                             env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=120)
    assert resumed.returncode == 1, resumed.stderr
    assert "--negatives-scope local on 2 processes; resuming on 1" in resumed.stderr, resumed.stderr


def test_a_rank_stopped_by_sigterm_says_so_and_the_other_names_it(tmp_path, digits_npy,
                                                                   ranks_of_a_job):
    run = tmp_path / "run"
    argv = ["--data", digits_npy, "--out", run, "--epochs", 500, *TINY]
    rank0, rank1 = ranks_of_a_job([argv, argv], tmp_path)
    wait_for(run / "checkpoint.pt", rank0)
    os.kill(rank1.pid, signal.SIGTERM)  # what torchrun's agent sends when another rank failed
    assert ended(rank1, timeout=60) == 1 and ended(rank0, timeout=60) == 1
    logs = [(tmp_path / f"rank{r}.log").read_text() for r in range(2)]
    errors = [[line for line in log.splitlines() if "error:" in line] for log in logs]
    assert all(len(e) == 1 for e in errors) and "Traceback" not in "".join(logs), logs
    assert "rank 1 lost contact with the job: it was stopped by SIGTERM" in errors[1][0], errors

    assert "rank 0 lost contact" in errors[0][0] and "rank 1 did not answer" in errors[0][0]


def test_optimizer_settings_are_plain_values_that_differ_only_with_the_step():
    a, b = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)
    same = distributed_step.optimizer_settings
    assert same([torch.optim.Adam(a.parameters(), 1e-3)]) == same(
        [torch.optim.Adam(b.parameters(), 1e-3)])  # other parameters, the same step
    assert same([torch.optim.Adam(a.parameters(), torch.tensor(1e-3))])[0][1][0]["lr"] == \
        pytest.approx(1e-3)  # a tensor learning rate as its number
    assert same([torch.optim.Adam(a.parameters(), 1e-3)]) != same(
        [torch.optim.Adam(b.parameters(), 2e-3)])
    assert same([torch.optim.Adam(a.parameters())]) != same([torch.optim.AdamW(a.parameters())])
    settings = same([torch.optim.SGD(a.parameters(), 0.1, momentum=0.9)])
    assert settings[0][0] == "SGD" and settings[0][1][0]["momentum"] == 0.9
    assert json.dumps(settings)  # plain JSON: the same digest on every rank
    # a value with an address (a function, a group) is named by its type, never by its address
    assert distributed_step.plain_settings({"f": nn_function, "g": [object()]}) == {
        "f": "function", "g": ["object"]}
    # one number in any type is one setting; different numbers never are
    plain = distributed_step.plain_settings
    assert plain(10) == plain(10.0) == plain(np.float32(10.0)) == plain(torch.tensor(10)) == 10.0
    assert plain(np.float32(1.0)) != plain(np.float32(5.0))
    assert plain(True) is True and plain(np.bool_(False)) is False


def nn_function(x):
    return x
