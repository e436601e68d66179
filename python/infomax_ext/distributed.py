"""Data-parallel training over ``torch.distributed``: whole-batch negatives, averaged gradients.

Every process (rank) of a group holds the same model and its own rows of each batch; the ranks'
rows, concatenated in rank order, are the global batch a single process would see.

- Whole-batch negatives (:func:`agree_on_batch`, :func:`shuffled_codes`): the MI bound's shuffle
  runs over the latent codes of the global batch, with exactly the permutation
  :func:`~infomax_ext.latent_permutation` gives that batch for rank 0's seed. Only codes travel:
  an all_gather of every rank's z (N d numbers for a global batch of N rows and d latent
  dimensions, per sample block) and, where the shuffled term has a gradient for z, the matching
  reduce-scatter (a sum) of that gradient. Each rank evaluates the bound on its own rows, so it
  returns the mean of the bound's terms over its rows: the mean over ranks is the whole-batch
  bound, the rank average of the MI chain's gradients is the whole-batch gradient, and each rank's
  codes get world_size times their whole-batch gradient (the rank average of the encoder's
  gradients divides that factor out).
- Averaged gradients (:func:`average_gradients`, :class:`AveragingOptimizer`): a bucketed
  all_reduce of the gradients before every optimizer step, so every rank takes the same step and
  holds bit-identical parameters. Not DistributedDataParallel: ``train_step`` takes its gradients
  with ``torch.autograd.grad``, which returns them instead of accumulating them into ``.grad``,
  and DDP averages from the hooks that accumulation fires; under DDP nothing would be averaged.
- Agreement checks: before any data moves, each train_step (:mod:`.distributed_step`: its
  settings, the parameters' layout and dtypes, and on the first step the weights themselves),
  each bound (batch size, latent width, dtype, shuffled_grad) and each averaging (parameter
  counts, gradient dtypes and layout) exchanges a few integers, so ranks that disagree get the
  same :class:`DistributedMismatchError` on every rank instead of a hang or a crash inside a
  collective. Every such exchange has one fixed length and names itself: ranks that reach
  different exchanges (one runs ``reuse_forward``, another not) are told so instead of meeting
  in collectives of different sizes. :func:`check_same` compares larger objects once, at the
  start of a run (a Trainer: its options, its model, the digest of the data each rank reads).
- A rank that stops answering: collectives wait ``init_from_env``'s ``timeout``, then
  :mod:`.distributed_failures` names the silent rank; rank 0's own work (reading the data,
  evaluating) is awaited longer (:func:`wait_for_rank0`).
- Launching (:func:`init_from_env`, :func:`from_rank0`): the process group from torchrun's
  environment, and values decided by rank 0 alone (a run directory, a checkpoint) sent to all.
"""
from __future__ import annotations

import datetime
import hashlib
import importlib
import os
import pickle
from typing import TYPE_CHECKING, Any, Callable, NamedTuple, Sequence, TypeVar

import torch
import torch.distributed as dist

from ._ops import seed_to_int64
from .distributed_failures import set_roll_call_store

if TYPE_CHECKING:
    from torch.distributed import ProcessGroup

_R = TypeVar("_R")

__all__ = [
    "DistributedMismatchError",
    "BatchAgreement",
    "rank_and_size",
    "agree_on_batch",
    "shuffled_codes",
    "average_gradients",
    "AveragingOptimizer",
    "mean_over",
    "all_objects",
    "check_same",
    "data_digest",
    "broadcast_module",
    "from_rank0",
    "wait_for_rank0",
    "import_before_init",
    "init_from_env",
    "local_device",
]

# Gradients are averaged in flat buffers of up to this many bytes (DistributedDataParallel's
# default bucket size): few collectives, each large enough to run at the network's bandwidth.
BUCKET_BYTES = 25 * 2**20
_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)



def _all_gather_rows(out: torch.Tensor, tensor: torch.Tensor, group: ProcessGroup | None) -> Any:
    """All processes' ``tensor`` concatenated along rows into ``out`` (looked up when called: a
    torch built without torch.distributed still imports this module)."""
    gather = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
    return gather(out, tensor, group=group)


def _reduce_scatter_rows(out: torch.Tensor, tensor: torch.Tensor, op: Any,
                         group: ProcessGroup | None) -> Any:
    """``tensor``'s row blocks summed over the processes, this process's block into ``out``."""
    scatter = getattr(dist, "reduce_scatter_single", None) or dist.reduce_scatter_tensor
    return scatter(out, tensor, op=op, group=group)


class DistributedMismatchError(ValueError):
    """The processes of a group disagree on something that must be equal on all of them."""


def rank_and_size(group: ProcessGroup | None) -> tuple[int, int]:
    """``(rank, world_size)`` of this process in ``group``."""
    if not dist.is_available() or not dist.is_initialized():
        raise RuntimeError("process_group given, but torch.distributed has no process group "
                           "initialised (torch.distributed.init_process_group)")
    return dist.get_rank(group), dist.get_world_size(group)


def _src(group: ProcessGroup | None) -> int:
    """The global rank of the group's rank 0 (collectives name sources by global rank)."""
    return dist.get_global_rank(group, 0) if group is not None else 0


def _dtype_code(dtype: torch.dtype) -> int:
    return _DTYPES.index(dtype) if dtype in _DTYPES else len(_DTYPES)


def _dtype_name(code: int) -> str:
    return str(_DTYPES[code]).removeprefix("torch.") if code < len(_DTYPES) else "another dtype"


def _hex(value: int) -> str:
    return f"digest {value & (2**64 - 1):016x}"


def _dtype_set(dtypes: Any) -> int:
    """The set of ``dtypes`` as a bit mask of their codes (:func:`_dtype_code`)."""
    return sum(1 << code for code in {_dtype_code(d) for d in dtypes})


def _dtype_set_names(mask: int) -> str:
    names = [_dtype_name(code) for code in range(len(_DTYPES) + 1) if mask >> code & 1]
    return "+".join(names) or "none"


def _digest(text: str) -> int:
    """A 64-bit digest of ``text`` as a signed integer (equal on every process)."""
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little",
                          signed=True)


def _layout(named: Sequence[tuple[str, torch.Tensor]]) -> int:
    """A digest of the names, shapes, dtypes and requires_grad flags of ``named`` tensors."""
    return _digest(repr([(name, tuple(t.shape), str(t.dtype), t.requires_grad)
                         for name, t in named]))


# Every agreement exchange sends EXCHANGE_LENGTH integers: the exchange's tag (its index in
# _EXCHANGES, plus 1) and its values, zero-padded. Ranks that reach different exchanges (one
# runs reuse_forward, another not) then still meet in collectives of one size and get a
# DistributedMismatchError naming the exchange each rank is at, instead of a gloo abort.
EXCHANGE_LENGTH = 16
_EXCHANGES = ("train_step's settings", "the MI bound over the whole batch", "gradient averaging",
              "train_step's weight check")


def _exchange(group: ProcessGroup | None, device: torch.device | str, what: str,
              checked: dict[str, int], extra: Sequence[int] = (),
              describe: dict[str, Callable[[int], str]] | None = None) -> list[list[int]]:
    """All ranks' ``extra`` integers, after checking that every rank is at the same exchange
    ``what`` (one of ``_EXCHANGES``) and gave the same ``checked`` integers (one all_gather of
    EXCHANGE_LENGTH integers per rank). A disagreement raises the same
    :class:`DistributedMismatchError` on every rank, naming ``what``, the quantity and each
    rank's value (through ``describe[name]`` when given)."""
    _, world = rank_and_size(group)
    values = [*checked.values(), *extra]
    if len(values) >= EXCHANGE_LENGTH:
        raise ValueError(f"{what}: {len(values)} values do not fit one exchange")
    mine = torch.zeros(EXCHANGE_LENGTH, dtype=torch.int64, device=device)
    mine[0] = _EXCHANGES.index(what) + 1
    mine[1:1 + len(values)] = torch.tensor(values, dtype=torch.int64)
    everyone = mine.new_empty(world * EXCHANGE_LENGTH)
    _all_gather_rows(everyone, mine, group=group)
    rows = everyone.view(world, -1).tolist()
    tags = [row[0] for row in rows]
    if len(set(tags)) > 1:
        names = {t: _EXCHANGES[t - 1] if 0 < t <= len(_EXCHANGES) else "another collective"
                 for t in tags}
        each = ", ".join(f"rank {r} at {names[t]}" for r, t in enumerate(tags))
        raise DistributedMismatchError(
            f"the processes reached different collectives ({each}): a setting that decides which "
            "collectives run differs between them (reuse_forward, negatives_scope, negatives, "
            "shuffled_grad, a custom loss function, ...); every process must make the same calls")
    rows = [row[1:1 + len(values)] for row in rows]
    check_agreement(what, {name: [row[k] for row in rows] for k, name in enumerate(checked)},
                    describe)
    return [row[len(checked):] for row in rows]


def check_agreement(what: str, each_rank: dict[str, list[int]],
                    describe: dict[str, Callable[[int], str]] | None = None) -> None:
    """Every rank gave the same value of each quantity (``each_rank[name]``: the ranks' values in
    rank order, already gathered); else the same :class:`DistributedMismatchError` on every rank,
    naming ``what``, the quantity and each rank's value (through ``describe[name]`` when given)."""
    for name, values in each_rank.items():
        if len(set(values)) > 1:
            show = (describe or {}).get(name, str)
            each = ", ".join(f"rank {r} has {show(v)}" for r, v in enumerate(values))
            raise DistributedMismatchError(
                f"{what}: the processes disagree on the {name} ({each}); every process must "
                "give the same")


# ----------------------------------------------------------------------------- negatives


class BatchAgreement(NamedTuple):
    """What the ranks agreed on for one bound: the shuffle's ``seed`` (rank 0's), this
    process's ``rank`` and the ``world_size``."""

    seed: int
    rank: int
    world_size: int


def agree_on_batch(group: ProcessGroup | None, n: int, z: torch.Tensor, seed: int,
                   shuffled_grad: bool = False) -> BatchAgreement:
    """Check that every rank has ``n`` data rows and codes ``z`` of the same shape and dtype, and
    the same ``shuffled_grad`` where it matters (the shuffled codes carry a gradient back, a
    reduce-scatter in the backward pass, when ``z`` requires one), and agree on the shuffle's
    seed: rank 0's ``seed``."""
    rank, world = rank_and_size(group)
    returned = bool(shuffled_grad) and z.requires_grad and torch.is_grad_enabled()
    seeds = _exchange(group, z.device, "the MI bound over the whole batch",
                      {"batch size": n, "number of latent codes": z.shape[0],
                       "latent width": z.shape[1],
                       "dtype of the latent codes": _dtype_code(z.dtype),
                       "gradient of the shuffled codes (shuffled_grad)": int(returned)},
                      [seed_to_int64(seed)],
                      {"dtype of the latent codes": _dtype_name,
                       "gradient of the shuffled codes (shuffled_grad)":
                           lambda v: "it" if v else "none"})
    return BatchAgreement(seeds[0][0], rank, world)


class _GatherRows(torch.autograd.Function):
    """All ranks' rows of ``z`` in rank order; the backward sums each rank's gradient of the
    gathered rows over the ranks and returns this rank's rows (a reduce-scatter)."""

    @staticmethod
    def forward(ctx: Any, z: torch.Tensor, group: ProcessGroup | None) -> torch.Tensor:
        ctx.group = group
        world = dist.get_world_size(group)
        z = z.contiguous()
        out = z.new_empty((world * z.shape[0], *z.shape[1:]))
        _all_gather_rows(out, z, group=group)
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        world = dist.get_world_size(ctx.group)
        out = grad.new_empty((grad.shape[0] // world, *grad.shape[1:]))
        _reduce_scatter_rows(out, grad.contiguous(), op=dist.ReduceOp.SUM, group=ctx.group)
        return out, None


def shuffled_codes(z: torch.Tensor, n: int, perm: torch.Tensor, agreement: BatchAgreement,
                  group: ProcessGroup | None, shuffled_grad: bool) -> torch.Tensor:
    """The codes the whole-batch shuffle pairs with this rank's codes: row ``s n + i`` (sample
    block s, data row i) is the global block-s code that ``perm`` sends this rank's row to.

    ``z`` (S n, d) holds this rank's codes, S sample blocks of its ``n`` data rows; ``perm``
    (S W n,) is ``latent_permutation(W n, S, agreement.seed)`` for the global batch, whose block
    s is every rank's block s in rank order. ``shuffled_grad=False``: the shuffled codes are constants
    and only the forward all_gather runs; ``True``: their gradient returns to the ranks that own
    them (a reduce-scatter in the backward pass)."""
    rank, world = agreement.rank, agreement.world_size
    m = z.shape[0]
    s = m // n
    blocks = torch.arange(s, device=z.device).unsqueeze(1)
    # Global position p within block s -> rank p // n, its row s n + p % n, at that rank's offset.
    p = (perm.view(s, world * n) - blocks * (world * n))[:, rank * n:(rank + 1) * n]
    index = (p // n) * m + blocks * n + p % n
    gathered: torch.Tensor = _GatherRows.apply(  # type: ignore[no-untyped-call]
        z if shuffled_grad else z.detach(), group)
    return gathered[index.reshape(-1)]


# ----------------------------------------------------------------------------- gradients


def average_gradients(params: Sequence[torch.nn.Parameter], group: ProcessGroup | None,
                      bucket_bytes: int = BUCKET_BYTES) -> None:
    """``p.grad`` becomes the mean of ``p.grad`` over the ranks of ``group``, for every ``p`` of
    ``params`` that has one (the same parameters on every rank, checked), in all_reduces of flat
    buckets of at most ``bucket_bytes``. Every rank receives the same sums and divides them the
    same way, so the averaged gradients are bit-identical on all ranks."""
    if not params:
        return
    grads = [p.grad for p in params if p.grad is not None]
    _, world = rank_and_size(group)
    _exchange(group, params[0].device, "gradient averaging",
              {"number of parameters": len(params),
               "number of parameter elements": sum(p.numel() for p in params),
               "number of parameters with a gradient": len(grads),
               "number of gradient elements": sum(g.numel() for g in grads),
               "dtypes of the gradients": _dtype_set(g.dtype for g in grads),
               "layout of the gradients (shapes, dtypes, devices)": _digest(repr(
                   [(tuple(p.shape), p.grad is not None and (str(p.grad.dtype), p.grad.device.type))
                    for p in params]))},
              describe={"dtypes of the gradients": _dtype_set_names,
                        "layout of the gradients (shapes, dtypes, devices)": _hex})
    bucket: list[torch.Tensor] = []
    size = 0
    for g in grads:
        if bucket and (g.dtype != bucket[0].dtype or g.device != bucket[0].device
                       or size + g.numel() * g.element_size() > bucket_bytes):
            _average_bucket(bucket, group, world)
            bucket, size = [], 0
        bucket.append(g)
        size += g.numel() * g.element_size()
    if bucket:
        _average_bucket(bucket, group, world)


def _average_bucket(grads: list[torch.Tensor], group: ProcessGroup | None, world: int) -> None:
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM, group=group)
    flat.div_(world)
    for g, part in zip(grads, flat.split([g.numel() for g in grads])):
        g.copy_(part.view_as(g))


class AveragingOptimizer:
    """``optimizer`` whose :meth:`step` first averages the gradients of its parameters over the
    ranks of ``group`` (:func:`average_gradients`); everything else is the optimizer's own."""

    def __init__(self, optimizer: torch.optim.Optimizer, group: ProcessGroup | None) -> None:
        self.optimizer, self.group = optimizer, group

    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        params = [p for g in self.optimizer.param_groups for p in g["params"]]
        average_gradients(params, self.group)
        return self.optimizer.step(closure)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.optimizer, name)


def mean_over(group: ProcessGroup | None, values: Sequence[float],
              device: torch.device | str = "cpu") -> list[float]:
    """The mean of each of ``values`` over the ranks of ``group`` (one all_reduce)."""
    _, world = rank_and_size(group)
    t = torch.tensor(list(values), dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM, group=group)
    return (t / world).tolist()


# ----------------------------------------------------------------------------- start of a run


def all_objects(group: ProcessGroup | None, obj: object) -> list[Any]:
    """Every rank's ``obj`` (picklable), in rank order."""
    _, world = rank_and_size(group)
    everyone: list[Any] = [None] * world
    dist.all_gather_object(everyone, obj, group=group)
    return everyone


def check_same(group: ProcessGroup | None, what: str, named: dict[str, Any]) -> None:
    """Raise the same :class:`DistributedMismatchError` on every rank unless all ranks hold
    equal values for every key of ``named`` (picklable values; one all_gather_object)."""
    everyone = all_objects(group, named)
    for key in named:
        values = [d.get(key) for d in everyone]
        if any(v != values[0] for v in values[1:]):
            each = "; ".join(f"rank {r}: {v!r}" for r, v in enumerate(values))
            raise DistributedMismatchError(
                f"{what}: the processes disagree on the {key} ({each}); every process must "
                "give the same")


def data_digest(samples: Any) -> str:
    """SHA-256 (hex) of ``samples`` (N, ...) as this process reads them: a tensor or
    :class:`~infomax_ext.data.MappedSamples` (its file read again, in chunks): the shape and the
    bytes of the values. Ranks that read a file at the same path but see other contents (another
    machine's copy) get other digests."""
    h = hashlib.sha256(repr(tuple(samples.shape)).encode())
    if isinstance(samples, torch.Tensor):
        chunks = (c.detach().cpu().contiguous().numpy()
              for c in samples.split(2**16))
    else:
        chunks = samples.chunks()
    for chunk in chunks:
        h.update(chunk.tobytes())
    return h.hexdigest()


@torch.no_grad()
def broadcast_module(module: torch.nn.Module, group: ProcessGroup | None) -> None:
    """Every parameter and buffer of ``module`` set to rank 0's values."""
    for t in module.state_dict().values():
        dist.broadcast(t, src=_src(group), group=group)


def from_rank0(group: ProcessGroup | None, fn: Callable[[], _R]) -> _R:
    """``fn()`` run on rank 0 alone, its value (or the exception it raised) sent to every rank
    and returned (raised) there too; ``fn()`` itself when ``group`` is None. For what one process
    decides: a run directory's name, its lock, a saved configuration or checkpoint read where
    only rank 0's file system holds it. The other ranks wait for rank 0 as long as ``fn`` takes
    (:func:`wait_for_rank0`). A value that some rank cannot unpickle (a memory-mapped data file
    that is missing on its machine) raises the same :class:`DistributedMismatchError` on every
    rank, naming the rank and why."""
    if group is None:
        return fn()
    rank, _ = rank_and_size(group)
    box: list[Any] = [None]
    if rank == 0:
        try:
            result: tuple[str, Any] = ("value", fn())
        except BaseException as exc:  # noqa: BLE001 - every rank must leave the same way
            result = ("error", _portable(exc))
        try:
            box[0] = pickle.dumps(result)
        except Exception as exc:  # noqa: BLE001
            box[0] = pickle.dumps(("error", RuntimeError(
                f"rank 0's result cannot be sent to the other processes: {exc}")))
    wait_for_rank0(group)
    dist.broadcast_object_list(box, src=_src(group), group=group)
    try:
        kind, value = pickle.loads(box[0])
        problem = None
    except Exception as exc:  # noqa: BLE001 - reported on every rank below
        problem = f"{type(exc).__name__}: {exc}"
    problems = all_objects(group, problem)
    failed = [(r, text) for r, text in enumerate(problems) if text is not None]
    if failed:
        raise DistributedMismatchError(
            "; ".join(f"rank {r} cannot take what rank 0 read or decided ({text})"
                      for r, text in failed)
            + "; every process must see the same files")
    if kind == "error":
        raise value
    returned: _R = value
    return returned


# How long the other ranks wait for rank 0's own work (reading and checking the data,
# evaluating a model): as long as that may take, not the group's timeout for a collective.
RANK0_WORK_TIMEOUT = datetime.timedelta(hours=24)


def wait_for_rank0(group: ProcessGroup | None,
                   timeout: datetime.timedelta = RANK0_WORK_TIMEOUT) -> None:
    """Every rank waits here until all have arrived, for up to ``timeout`` (gloo: a
    ``monitored_barrier``, which fails at once when a rank's process is gone; other backends
    wait in a collective, up to the group's timeout). Called where rank 0 alone worked for a
    while and the others wait for it."""
    if group is None:
        return
    if dist.get_backend(group) == "gloo":
        dist.monitored_barrier(group, timeout=timeout)


def _portable(exc: BaseException) -> BaseException:
    """``exc`` if it pickles (to be sent to the other ranks), else a RuntimeError with its text."""
    try:
        pickle.loads(pickle.dumps(exc))
        return exc
    except Exception:  # noqa: BLE001
        return RuntimeError(f"{type(exc).__name__}: {exc}")


# ----------------------------------------------------------------------------- launching

_TORCHRUN_VARIABLES = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


# torch modules that bind the default process group as a default argument value when they are
# imported after it exists (torch.distributed.nn.functional: ten functions with
# ``group=group.WORLD``; importing torch._dynamo imports it, and so does creating the first
# optimizer). Imported later, they keep the group alive after destroy_process_group: its gloo
# threads live on into the interpreter's shutdown, and one that is still releasing the last
# collective's tensors then aborts the process (SIGABRT, "terminate called without an active
# exception"), after all of its work succeeded.
_MODULES_THAT_BIND_THE_GROUP = ("torch.distributed.nn.functional",)


def import_before_init() -> None:
    """Import :data:`_MODULES_THAT_BIND_THE_GROUP` (about 10 ms): call before
    ``torch.distributed.init_process_group`` so that ``destroy_process_group`` frees the group
    and joins its threads. :func:`init_from_env` calls it. A module that this torch build
    cannot import cannot bind the group either, and is skipped."""
    for name in _MODULES_THAT_BIND_THE_GROUP:
        try:
            importlib.import_module(name)
        except ImportError:
            pass


def init_from_env(backend: str | None, device: torch.device,
                  timeout: datetime.timedelta = datetime.timedelta(minutes=30),
                  ) -> ProcessGroup | None:
    """The default process group (``torch.distributed.group.WORLD``) when this process was
    started by torchrun (its environment names RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT),
    initialised here if it is not yet; None otherwise. ``backend`` None: nccl for a CUDA
    ``device``, gloo for the CPU. ``timeout``: how long a collective waits for a silent rank
    (:mod:`.distributed_failures` names it afterwards; :func:`from_rank0` waits longer for
    rank 0's own work)."""
    if not all(v in os.environ for v in _TORCHRUN_VARIABLES):
        return None
    if not dist.is_available():
        raise RuntimeError("started by torchrun, but this torch build has no torch.distributed")
    if not dist.is_initialized():
        if backend is None:
            backend = "nccl" if device.type == "cuda" else "gloo"
        device_id = None
        if device.type == "cuda":
            device_id = local_device(device)
            torch.cuda.set_device(device_id)
        import_before_init()
        # torchrun's store outlives a restart (--max-restarts), and with it the addresses the
        # previous attempt's processes published: each attempt keys its own.
        store, rank, world = next(dist.rendezvous("env://", timeout=timeout))  # type: ignore[attr-defined]
        attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
        store = dist.PrefixStore(f"infomax_ext/{attempt}", store)  # type: ignore[attr-defined]
        dist.init_process_group(backend, store=store, rank=rank, world_size=world,
                                timeout=timeout, device_id=device_id)
        set_roll_call_store(store, rank, world)
    return dist.group.WORLD


def local_device(device: torch.device) -> torch.device:
    """``device``; a CUDA device without an index becomes this process's own GPU, ``cuda:L``
    for torchrun's LOCAL_RANK L (else the rank modulo the visible GPUs)."""
    if device.type != "cuda" or device.index is not None:
        return device
    if "LOCAL_RANK" in os.environ:
        return torch.device("cuda", int(os.environ["LOCAL_RANK"]))
    rank = dist.get_rank() if dist.is_initialized() else int(os.environ.get("RANK", "0"))
    return torch.device("cuda", rank % torch.cuda.device_count())
