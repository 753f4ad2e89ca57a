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

The data are scikit-learn's digits from `vmamba_ref.tools.data` (1,797 8x8 images, upsampled), which
ship inside scikit-learn: no download. `--batch-size` is per process; the global batch is
`world_size * batch_size`.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
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

from vmamba_ref.checkpoint import load_checkpoint, read_saved, save_checkpoint
from vmamba_ref.contract import BACKENDS
from vmamba_ref.model import MODELS, VMamba
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


@dataclass(frozen=True)
class RunConfig:
    """One `vmamba train` run: what to train, where, and for how long."""

    model: str = "vmamba_mini"  # a key of vmamba_ref.model.MODELS
    backend: str = "torch"  # scan backend; "torch" trains on any device
    image_size: int = 32  # digits are upsampled from 8x8 to this size
    train: TrainConfig = field(default_factory=TrainConfig)
    out: Path = Path("outputs/train")  # rank 0 writes out/last.pt here
    resume: bool = False  # continue from out/last.pt (which must exist)
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
    if config.resume:
        checkpoint = read_saved(path)
        load_checkpoint(model, checkpoint, entry="model", strict=True)
        optimizer.load_state_dict(_state(checkpoint, "optimizer", path))
        scheduler.load_state_dict(_state(checkpoint, "scheduler", path))
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
                history=dataclasses.asdict(history), model_name=config.model,
            )

    start_time = time.perf_counter()
    with tqdm(total=stop, initial=step, desc="training", unit="step", disable=not (main and config.progress)) as bar:
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
                if step >= stop:
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
    history.seconds += time.perf_counter() - start_time
    difference = replica_difference(model)
    if dist.is_initialized():
        dist.barrier()  # rank 0's checkpoint is written before anyone returns
    return TrainResult(model, history, rank, world, step, path, difference)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    defaults = TrainConfig()
    parser.add_argument("--model", default=RunConfig.model, choices=sorted(MODELS), help="named constructor")
    parser.add_argument("--backend", default=RunConfig.backend, choices=list(BACKENDS), help="scan backend (torch: any device)")
    parser.add_argument("--epochs", type=int, default=defaults.epochs)
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size, help="images per process and step")
    parser.add_argument("--lr", type=float, default=defaults.lr, help="peak AdamW learning rate")
    parser.add_argument("--weight-decay", type=float, default=defaults.weight_decay)
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--image-size", type=int, default=RunConfig.image_size)
    parser.add_argument("--out", type=Path, default=RunConfig.out, help="folder of last.pt")
    parser.add_argument("--resume", action="store_true", help="continue from <out>/last.pt")
    parser.add_argument("--max-steps", type=int, default=None, help="stop after this many steps in all")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    train_config = TrainConfig(
        epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
        weight_decay=args.weight_decay, seed=args.seed,
    )
    config = RunConfig(
        model=args.model, backend=args.backend, image_size=args.image_size, train=train_config,
        out=args.out, resume=args.resume, max_steps=args.max_steps, device=args.device,
        progress=not args.no_progress,
    )
    result = train(config)
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

