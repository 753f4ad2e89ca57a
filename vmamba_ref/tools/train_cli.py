"""`vmamba train`: train a VMamba with DistributedDataParallel, one process per device.

    vmamba train --epochs 3                                        # one process
    torchrun --nproc_per_node 2 -m vmamba_ref.tools.cli train --epochs 3  # two processes (DDP)
    torchrun --nproc_per_node 2 -m vmamba_ref.tools.cli train --resume    # continue from last.pt

Under `torchrun` (which sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT) every
process joins one process group: NCCL when it trains on a CUDA device, gloo on the CPU. Without
those variables it trains as a single process, without a process group. Each process builds the
same model from the same seed (DDP also broadcasts rank 0's weights when it wraps the model),
reads its own shard of every epoch through a DistributedSampler, and DDP averages the gradients,
so the replicas stay identical; the run ends by checking that they are, and fails if not.

Rank 0 alone shows the progress bar, evaluates on the test split, prints the epoch summaries and
writes `<out>/last.pt` with `save_checkpoint` after every epoch and at the end: the weights, the
config, the optimizer and scheduler states and the position in the data. `--resume` continues
from that file on every rank: the weights, optimizer, schedule, data order and random draws pick
up where they stopped, so a resumed run ends with the weights of an uninterrupted one. (Random
draws are seeded per step and rank: the data shifts and stochastic depth of step t are the same
whenever step t runs.)

`--resume` refuses settings that would change the run: the stored `train_config`, model and
image size are compared with the new arguments and every differing field is listed. With
`--allow-config-change` the new values take effect (a new `--lr` or `--weight-decay` reaches the
optimizer and schedule) and the checkpoint records each change in `config_changes` (step,
field, old, new). `--max-steps` is where to stop, not a setting of the run, and may differ.

Ctrl-C (SIGINT) finishes the step in progress, saves a resumable checkpoint and exits with code
130 and a one-line message; `--resume` then ends bit-identical to an uninterrupted run.

The data are scikit-learn's digits from `vmamba_ref.tools.data` (1,797 8x8 images, upsampled), which
ship inside scikit-learn: no download. `--batch-size` is per process; the global batch is
`world_size * batch_size`.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, TensorDataset
from torch.utils.data.distributed import DistributedSampler
from tqdm.auto import tqdm

from vmamba_ref.checkpoint import (
    CheckpointCorruptError,
    CheckpointMismatchError,
    load_checkpoint,
    read_saved,
    save_checkpoint,
)
from vmamba_ref.contract import BACKENDS
from vmamba_ref.model import MODELS, VMamba
from vmamba_ref.tools.cli import (
    UsageError,
    check_device,
    check_installed,
    check_output_dir,
    float_above,
    int_at_least,
)
from vmamba_ref.tools.data import Split, load_digits
from vmamba_ref.tools.train import (
    History,
    TrainConfig,
    accuracy,
    build_optimizer,
    optimization_step,
    random_shift,
)

CHECKPOINT_NAME = "last.pt"
INTERRUPTED_EXIT = 130  # the shell's code for a run stopped by SIGINT

log = logging.getLogger(__name__)


class ResumeConfigError(ValueError):
    """`--resume` with settings that differ from the checkpoint's; the message lists them."""


@dataclass(frozen=True)
class RunConfig:
    """One `vmamba train` run: what to train, where, and for how long."""

    model: str = "vmamba_mini"  # a key of vmamba_ref.model.MODELS
    backend: str = "torch"  # scan backend; "torch" trains on any device
    image_size: int = 32  # digits are upsampled from 8x8 to this size
    train: TrainConfig = field(default_factory=TrainConfig)
    out: Path = Path("outputs/train")  # rank 0 writes out/last.pt here
    resume: bool = False  # continue from out/last.pt (which must exist)
    allow_config_change: bool = False  # let --resume change the stored settings (recorded)
    max_steps: int | None = None  # stop after this many optimizer steps in all (resumed ones count)
    device: str = "auto"  # "auto": cuda:<local rank> when CUDA is available, else cpu
    progress: bool = True  # progress bar (rank 0 only)
    timeout_s: float = 300.0  # how long a collective may wait for the other processes

    def __post_init__(self) -> None:
        if self.model not in MODELS:
            raise ValueError(f"RunConfig.model must be one of {sorted(MODELS)}, got {self.model!r}")
        if self.backend not in BACKENDS:
            raise ValueError(f"RunConfig.backend must be one of {list(BACKENDS)}, got {self.backend!r}")
        if self.max_steps is not None and self.max_steps < 1:
            raise ValueError(f"RunConfig.max_steps must be >= 1 or None, got {self.max_steps}")
        if self.train.epochs < 1 or self.train.batch_size < 1:
            raise ValueError(
                f"RunConfig.train needs epochs >= 1 and batch_size >= 1, got "
                f"{self.train.epochs} and {self.train.batch_size}"
            )


@dataclass
class TrainResult:
    """What a process ends with: its replica (unwrapped), the history rank 0 kept, and where
    this process stood in the group."""

    model: VMamba
    history: History
    rank: int
    world_size: int
    steps: int
    checkpoint: Path
    replica_difference: float  # max |param - rank 0's param| over every parameter (0 if in sync)
    interrupted: bool = False  # stopped by SIGINT; the checkpoint resumes the run


@dataclass(frozen=True)
class Distributed:
    """This process's place in the group (world_size 1 and no process group when alone)."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    owns_group: bool  # this run created the process group and destroys it at the end


def resolve_device(device: str, local_rank: int) -> torch.device:
    """`device`, with "auto" meaning cuda:<local_rank> when CUDA is available, else cpu."""
    if device == "auto":
        return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    resolved = torch.device(device)
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {device!r}: CUDA is not available here; pass --device cpu")
    return resolved


def setup_distributed(device: str, timeout_s: float) -> Distributed:
    """Join the process group torchrun describes in the environment (NCCL for CUDA, gloo for the
    CPU), or run alone when WORLD_SIZE is not set."""
    if "WORLD_SIZE" not in os.environ:
        return Distributed(0, 1, 0, resolve_device(device, 0), owns_group=False)
    missing = [v for v in ("RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT") if v not in os.environ]
    if missing:
        raise RuntimeError(
            f"WORLD_SIZE is set but {missing} are not: launch with torchrun "
            "(torchrun --nproc_per_node N -m vmamba_ref.tools.cli train ...)"
        )
    local_rank = int(os.environ["LOCAL_RANK"])
    resolved = resolve_device(device, local_rank)
    owns_group = not dist.is_initialized()
    if owns_group:
        backend = "nccl" if resolved.type == "cuda" else "gloo"
        if resolved.type == "cuda":
            torch.cuda.set_device(resolved)
        dist.init_process_group(backend, timeout=timedelta(seconds=timeout_s))
    return Distributed(dist.get_rank(), dist.get_world_size(), local_rank, resolved, owns_group)


def step_seed(seed: int, epoch: int, batch: int, rank: int) -> int:
    """The seed of one step's random draws on one rank: a function of where the step is, not of
    what ran before it, so a resumed run draws what the uninterrupted run drew."""
    return (((seed * 1_000_003 + epoch) * 1_000_003 + batch) * 4_099 + rank) % 2**63


@torch.no_grad()
def replica_difference(model: torch.nn.Module) -> float:
    """Max |p - p on rank 0| over all parameters and ranks: 0.0 when every replica is identical.
    A collective: every process of the group must call it. 0.0 without a process group."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return 0.0
    flat = torch.cat([p.detach().reshape(-1).float() for p in model.parameters()])  # (n_params,)
    reference = flat.clone()
    dist.broadcast(reference, src=0)
    difference = (flat - reference).abs().max().reshape(1)  # (1,)
    dist.all_reduce(difference, op=dist.ReduceOp.MAX)
    return difference.item()


def run_settings(config: RunConfig) -> dict[str, object]:
    """The settings a resumed run must share with its checkpoint: the TrainConfig fields, the
    model and the image size (`max_steps`, `out`, `device`, `backend` and `progress` are not
    part of the run's result)."""
    return {**dataclasses.asdict(config.train), "model": config.model, "image_size": config.image_size}


def stored_settings(checkpoint: dict, path: Path) -> dict[str, object]:
    settings = dict(_state(checkpoint, "train_config", path))
    settings["model"] = _state(checkpoint, "model_name", path)
    if "image_size" in checkpoint:
        settings["image_size"] = checkpoint["image_size"]
    return settings


def settings_changes(stored: dict[str, object], new: dict[str, object]) -> list[tuple[str, object, object]]:
    """(field, stored, new) for every setting that differs, in field order."""
    return [(name, stored[name], value) for name, value in new.items() if name in stored and stored[name] != value]


def _state(checkpoint: dict, key: str, path: Path) -> object:
    if key not in checkpoint:
        raise ValueError(f"--resume: {path} has no `{key}` entry; it was not written by `vmamba train`")
    return checkpoint[key]


def train(config: RunConfig) -> TrainResult:
    """Run `config` in this process, as one rank of the torchrun group or alone (see the module
    docstring). Returns this process's replica and, on rank 0, the history."""
    group = setup_distributed(config.device, config.timeout_s)
    rank, world, device = group.rank, group.world_size, group.device
    try:
        return _train(config, rank, world, device)
    finally:
        if group.owns_group and dist.is_initialized():
            dist.destroy_process_group()


def _train(config: RunConfig, rank: int, world: int, device: torch.device) -> TrainResult:
    tc = config.train
    torch.manual_seed(tc.seed)  # the same initial weights on every rank
    train_split, test_split = load_digits(size=config.image_size, seed=tc.seed)
    test_split = Split(test_split.images.to(device), test_split.labels.to(device))
    model = MODELS[config.model](backend=config.backend, in_chans=1, num_classes=10).to(device)
    dataset = TensorDataset(train_split.images, train_split.labels)
    sampler = DistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=True, seed=tc.seed, drop_last=True)
    loader = DataLoader(dataset, batch_size=tc.batch_size, sampler=sampler, drop_last=True)
    steps_per_epoch = len(loader)
    if steps_per_epoch == 0:
        raise ValueError(
            f"--batch-size {tc.batch_size} x {world} processes exceeds the {len(dataset)} training images"
        )
    total = tc.epochs * steps_per_epoch
    optimizer, scheduler = build_optimizer(model, tc, steps_per_epoch, total)

    path = config.out / CHECKPOINT_NAME
    history, epoch, skip = History(), 0, 0
    config_changes: list[dict] = []
    if config.resume:
        checkpoint = read_saved(path)
        changes = settings_changes(stored_settings(checkpoint, path), run_settings(config))
        if changes and not config.allow_config_change:
            listed = ", ".join(f"{name} {old!r} -> {new!r}" for name, old, new in changes)
            raise ResumeConfigError(
                f"--resume: {path} was trained with other settings ({listed}); resume with the stored "
                "values, or pass --allow-config-change to change the run (the change is recorded)"
            )
        load_checkpoint(model, checkpoint, entry="model", strict=True)
        optimizer.load_state_dict(_state(checkpoint, "optimizer", path))
        scheduler.load_state_dict(_state(checkpoint, "scheduler", path))
        config_changes = list(checkpoint.get("config_changes", []))
        if changes:
            config_changes += [
                {"step": int(_state(checkpoint, "step", path)), "field": name, "old": old, "new": new}
                for name, old, new in changes
            ]
            _apply_optimizer_settings(optimizer, scheduler, tc)
        epoch, skip = int(_state(checkpoint, "epoch", path)), int(_state(checkpoint, "batch", path))
        saved_world = int(_state(checkpoint, "world_size", path))
        if skip and saved_world != world:
            raise ValueError(
                f"--resume: {path} stopped inside an epoch with {saved_world} processes; resume it "
                f"with {saved_world} processes (this run has {world}) so the data order matches"
            )
        history = History(**_state(checkpoint, "history", path))
    step = epoch * steps_per_epoch + skip
    stop = total if config.max_steps is None else min(total, config.max_steps)

    ddp = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None) if world > 1 else model
    main = rank == 0

    def save(epoch_next: int, batch: int) -> None:
        if main:
            save_checkpoint(
                model, path, optimizer=optimizer.state_dict(), scheduler=scheduler.state_dict(),
                epoch=epoch_next, batch=batch, world_size=world, step=step, train_config=tc,
                history=dataclasses.asdict(history), model_name=config.model, image_size=config.image_size,
                config_changes=config_changes,
            )

    stop_request = _StopRequest(device)
    start_time = time.perf_counter()
    with stop_request, tqdm(total=stop, initial=step, desc="training", unit="step", disable=not (main and config.progress)) as bar:
        while epoch < tc.epochs and step < stop:
            sampler.set_epoch(epoch)
            ddp.train()
            batch = 0
            for batch, (images, labels) in enumerate(loader, start=1):
                if batch <= skip:
                    continue
                seed = step_seed(tc.seed, epoch, batch, rank)
                torch.manual_seed(seed)  # stochastic depth of this step
                images = random_shift(images, tc.shift, torch.Generator().manual_seed(seed)).to(device)  # (b, 1, s, s)
                loss = optimization_step(ddp, optimizer, scheduler, images, labels.to(device), tc)
                step += 1
                if main:
                    history.step_loss.append(loss.item())
                    bar.update(1)
                    bar.set_postfix(loss=f"{loss.item():.3f}")
                    log.info("step %d/%d: loss %.4f", step, stop, loss.item())
                if step >= stop or stop_request.agreed():
                    break
            skip = 0
            if batch < steps_per_epoch:  # stopped inside the epoch by max_steps
                save(epoch, batch)
                break
            epoch += 1
            if main:
                history.epoch_accuracy.append(accuracy(model, test_split))
                bar.write(
                    f"epoch {epoch}/{tc.epochs}: loss {history.step_loss[-1]:.3f}, "
                    f"test accuracy {100 * history.epoch_accuracy[-1]:.2f}%"
                )
            save(epoch, 0)
            if stop_request.stopped:
                break
    history.seconds += time.perf_counter() - start_time
    difference = replica_difference(model)
    if dist.is_initialized():
        dist.barrier()  # rank 0's checkpoint is written before anyone returns
    return TrainResult(model, history, rank, world, step, path, difference, interrupted=stop_request.stopped)


def _apply_optimizer_settings(optimizer: torch.optim.Optimizer, scheduler: torch.optim.lr_scheduler.LambdaLR,
                              tc: TrainConfig) -> None:
    """Make a changed --lr / --weight-decay take effect after the optimizer and schedule states
    were restored (they carry the stored values)."""
    scheduler.base_lrs = [tc.lr for _ in optimizer.param_groups]
    factor = scheduler.lr_lambdas[0](scheduler.last_epoch)
    for group in optimizer.param_groups:
        group["initial_lr"] = tc.lr
        group["lr"] = tc.lr * factor
        group["weight_decay"] = tc.weight_decay
    scheduler._last_lr = [group["lr"] for group in optimizer.param_groups]


class _StopRequest:
    """SIGINT during training: the handler only raises a flag; the loop checks it after each step
    and, under a process group, all ranks agree (a MAX all-reduce) so that they stop at the same
    step. The previous handler comes back on exit. Off the main thread (where Python cannot
    install handlers) Ctrl-C keeps its usual KeyboardInterrupt."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.requested = False
        self.stopped = False
        self._previous = None

    def __enter__(self) -> _StopRequest:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)

    def _handle(self, signum: int, frame: object) -> None:
        self.requested = True

    def agreed(self) -> bool:
        """True (on every rank) when any rank was interrupted."""
        flag = self.requested
        if dist.is_initialized() and dist.get_world_size() > 1:
            shared = torch.tensor([float(flag)], device=self.device)  # (1,)
            dist.all_reduce(shared, op=dist.ReduceOp.MAX)
            flag = bool(shared.item())
        self.stopped = self.stopped or flag
        return flag


def add_arguments(parser: argparse.ArgumentParser) -> None:
    defaults = TrainConfig()
    parser.add_argument("--model", default=RunConfig.model, choices=sorted(MODELS), help="named constructor")
    parser.add_argument("--backend", default=RunConfig.backend, choices=list(BACKENDS), help="scan backend (torch: any device)")
    parser.add_argument("--epochs", type=int_at_least(1), default=defaults.epochs)
    parser.add_argument("--batch-size", type=int_at_least(1), default=defaults.batch_size, help="images per process and step")
    parser.add_argument("--lr", type=float_above(0.0), default=defaults.lr, help="peak AdamW learning rate")
    parser.add_argument("--weight-decay", type=float_above(0.0, inclusive=True), default=defaults.weight_decay)
    parser.add_argument("--seed", type=int_at_least(0), default=defaults.seed)
    parser.add_argument("--image-size", type=int_at_least(8), default=RunConfig.image_size,
                        help="side of the (upsampled) digits, at least their 8 pixels")
    parser.add_argument("--out", type=Path, default=RunConfig.out, help="folder of last.pt")
    parser.add_argument("--resume", action="store_true", help="continue from <out>/last.pt")
    parser.add_argument("--allow-config-change", action="store_true",
                        help="let --resume change the stored settings (batch size, seed, lr, ...); recorded in the checkpoint")
    parser.add_argument("--max-steps", type=int_at_least(1), default=None, help="stop after this many steps in all")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def check_arguments(args: argparse.Namespace) -> None:
    """Every check that can fail on the user's arguments, before any work (UsageError)."""
    check_device("--device", args.device, allow_auto=True)
    check_output_dir("--out", args.out)
    check_installed("sklearn", "demo", "the digits data")
    checkpoint = args.out / CHECKPOINT_NAME
    if args.resume and not checkpoint.is_file():
        raise UsageError(f"--resume: no checkpoint {checkpoint} to continue from")
    if args.allow_config_change and not args.resume:
        raise UsageError("--allow-config-change only applies with --resume")
    world = int(os.environ.get("WORLD_SIZE", "1"))
    train_images = len(load_digits(size=8)[0].labels)
    if args.batch_size * world > train_images:
        raise UsageError(
            f"--batch-size {args.batch_size} x {world} process(es) exceeds the {train_images} training images"
        )


def run(args: argparse.Namespace) -> int:
    check_arguments(args)
    train_config = TrainConfig(
        epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
        weight_decay=args.weight_decay, seed=args.seed,
    )
    config = RunConfig(
        model=args.model, backend=args.backend, image_size=args.image_size, train=train_config,
        out=args.out, resume=args.resume, allow_config_change=args.allow_config_change,
        max_steps=args.max_steps, device=args.device, progress=not args.no_progress,
    )
    try:
        result = train(config)
    except (ResumeConfigError, CheckpointCorruptError, CheckpointMismatchError) as error:
        raise UsageError("; ".join(str(error).splitlines())) from None
    except KeyboardInterrupt:  # before the training loop took over SIGINT: nothing to save
        print("vmamba train: interrupted before training started; nothing saved", file=sys.stderr)
        return INTERRUPTED_EXIT
    if result.interrupted:
        if result.rank == 0:
            print(
                f"vmamba train: interrupted after step {result.steps}; checkpoint {result.checkpoint} "
                "saved, continue with --resume", file=sys.stderr,
            )
        return INTERRUPTED_EXIT
    if result.rank == 0:
        acc = result.history.epoch_accuracy
        print(
            f"{config.model} ({config.backend!r} backend), {result.world_size} process(es): "
            f"{result.steps} steps, last test accuracy "
            f"{'n/a' if not acc else f'{100 * acc[-1]:.2f}%'}, checkpoint {result.checkpoint}"
        )
        if result.replica_difference == 0.0:
            print(f"parameters identical on all {result.world_size} process(es)")
    if result.replica_difference != 0.0:
        print(
            f"rank {result.rank}: replicas diverged, max |param - rank 0's| = {result.replica_difference:.3e}",
            file=sys.stderr,
        )
        return 1
    return 0

