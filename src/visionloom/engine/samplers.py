"""Seeded, sharded, resumable batch samplers: the part of resuming bit for bit that is about data.

A sampler yields batches of (sample index, draw seed). Both come from (run seed, epoch) alone, so a
batch is the same whatever the number of workers, and `set_epoch(epoch, start)` skips the batches
a resumed run has already done. Batches are sharded whole: with P processes, process r takes global
batches r, r+P, ... (identity-balanced batches stay balanced; no sample is seen by two processes in
an epoch). Every trainer uses these: retrieval (identity batches for SDM), grounding and the VLM.
"""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Iterator

import torch
from torch.utils.data import Dataset

# Mixes the run seed with the epoch: a prime, so (seed, epoch) pairs do not collide.
EPOCH_SEED_STRIDE = 1_000_003


class Batches:
    """Base: per-epoch global batches of (index, draw seed), this process's share, a resume offset."""

    def __init__(self, seed: int, rank: int = 0, world_size: int = 1):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside world size {world_size}")
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.epoch = 0
        self.start = 0  # batches of this process to skip in the current epoch (resume)

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.epoch, self.start = epoch, start

    def generator(self) -> torch.Generator:
        return torch.Generator().manual_seed(self.seed * EPOCH_SEED_STRIDE + self.epoch)

    def global_batches(self) -> list[list[tuple[int, int]]]:
        raise NotImplementedError

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        batches = self.global_batches()
        per_process = len(batches) // self.world_size  # equal counts, so processes step together
        mine = batches[self.rank :: self.world_size][:per_process]
        yield from mine[self.start :]

    def __len__(self) -> int:
        return len(self.global_batches()) // self.world_size


class RandomBatches(Batches):
    """Shuffled samples in batches of `batch_size`; the last incomplete batch is dropped."""

    def __init__(self, num_samples: int, batch_size: int, seed: int, rank: int = 0, world_size: int = 1):
        super().__init__(seed, rank, world_size)
        if num_samples < batch_size * world_size:
            raise ValueError(
                f"{num_samples} samples cannot fill one batch of {batch_size} on each of {world_size} processes"
            )
        self.num_samples, self.batch_size = num_samples, batch_size

    def global_batches(self) -> list[list[tuple[int, int]]]:
        generator = self.generator()
        order = torch.randperm(self.num_samples, generator=generator).tolist()
        seeds = torch.randint(0, 2**62, (self.num_samples,), generator=generator).tolist()
        pairs = list(zip(order, seeds, strict=True))
        count = self.num_samples // self.batch_size
        return [pairs[i * self.batch_size : (i + 1) * self.batch_size] for i in range(count)]


class IdentityBatches(Batches):
    """IRRA's RandomIdentitySampler as batches: `ids_per_batch` identities x `batch_size / ids_per_batch` samples.

    Each identity's samples are shuffled and cut into groups of that size (topped up by repetition
    when an identity has fewer); batches take one group from each of `ids_per_batch` identities
    drawn at random among those with groups left.
    """

    def __init__(
        self,
        pids: list[int],
        batch_size: int,
        ids_per_batch: int,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
    ):
        super().__init__(seed, rank, world_size)
        if batch_size % ids_per_batch:
            raise ValueError(f"batch_size {batch_size} is not a multiple of ids_per_batch {ids_per_batch}")
        self.instances = batch_size // ids_per_batch
        self.ids_per_batch = ids_per_batch
        self.by_pid: dict[int, list[int]] = defaultdict(list)
        for index, pid in enumerate(pids):
            self.by_pid[pid].append(index)
        if len(self.by_pid) < ids_per_batch:
            raise ValueError(f"ids_per_batch {ids_per_batch} but the split has {len(self.by_pid)} identities")
        if len(pids) < batch_size * world_size:
            # Topping identities up by repetition would otherwise build batches out of copies.
            raise ValueError(
                f"train.batch_size {batch_size} on {world_size} process(es) needs {batch_size * world_size} "
                f"training samples; the split has {len(pids)}"
            )

    def global_batches(self) -> list[list[tuple[int, int]]]:
        generator = self.generator()
        rng = random.Random(int(torch.randint(0, 2**62, (1,), generator=generator)))
        groups: dict[int, list[list[int]]] = {}
        for pid in sorted(self.by_pid):
            indices = list(self.by_pid[pid])
            if len(indices) < self.instances:
                indices += rng.choices(indices, k=self.instances - len(indices))
            rng.shuffle(indices)
            cut = len(indices) - len(indices) % self.instances
            groups[pid] = [indices[i : i + self.instances] for i in range(0, cut, self.instances)]
        batches = []
        while True:
            available = [pid for pid in groups if groups[pid]]
            if len(available) < self.ids_per_batch:
                break
            chosen = rng.sample(available, self.ids_per_batch)
            batch = [index for pid in chosen for index in groups[pid].pop()]
            batches.append([(index, rng.getrandbits(62)) for index in batch])
        return batches


class Items(Dataset):
    """A list as a Dataset: indexed by a sampler's (index, draw seed) or by a plain index."""

    def __init__(self, items: list):
        self.items = items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, key):
        index = key[0] if isinstance(key, tuple) else key
        return self.items[index]
