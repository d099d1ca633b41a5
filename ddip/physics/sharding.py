"""A volume's slices split across the ranks of a process group (``torchrun``): the data layout of distributed D3IP.

Rank ``r`` of ``P`` owns the contiguous block of slices ``[lo, hi)`` (:func:`Shard.even`: the first ``D mod P`` ranks
hold one slice more). What couples the slices is carried across the blocks explicitly:

====================================  ==================================================================
conjugate gradient over the volume    its inner products are summed over the ranks (:meth:`Shard.sum`)
TV along z (DiffusionMBIR, mbir)      the difference at a block's edge needs the next block's first
                                      slice, its adjoint the previous block's last one: a halo exchange
                                      (:meth:`Shard.next_first`, :meth:`Shard.previous_last`), circular as
                                      the single-process differences are
noise (init, DDIM steps)              every rank draws the whole volume's noise from the same generator
                                      and keeps its block, so each slice gets the noise it gets in one process
D3IP's K adaptation slices            drawn from the same generator on every rank; their states are
                                      assembled on every rank (:meth:`Shard.gather_rows`)
the LoRA gradient                     all-reduced (:func:`ddip.distributed.all_reduce_sum`)
====================================  ==================================================================

Measurements and the operator stay whole on every rank (they are the input file, and the adaptation needs the
operator of any drawn slice); the diffusion state, the network passes, CG and ADMM work on the block only.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
from torch import Tensor

from ddip.errors import DdipError
from ddip.physics.base import normal_of, physics_subset, pseudo_inverse


@dataclass(frozen=True)
class Shard:
    """Slices ``[lo, hi)`` of a volume of ``n`` slices, owned by ``rank`` of ``world`` processes."""

    lo: int
    hi: int
    n: int
    rank: int
    world: int
    # bytes this rank contributed to each kind of collective (the communication volume a benchmark reports)
    traffic: dict = field(default_factory=lambda: defaultdict(int), compare=False, repr=False)

    @classmethod
    def even(cls, n: int, rank: int, world: int) -> "Shard":
        """Contiguous blocks as even as possible; every rank needs at least one slice."""
        if world < 1 or not 0 <= rank < world:
            raise DdipError(f"rank {rank} of {world} processes is not valid")
        if n < world:
            raise DdipError(f"a volume of {n} slices cannot be split over {world} processes: use at most {n}")
        base, extra = divmod(n, world)
        lo = rank * base + min(rank, extra)
        return cls(lo, lo + base + (rank < extra), n, rank, world)

    @property
    def sizes(self) -> list[int]:
        """Slices of every rank's block, in rank order."""
        base, extra = divmod(self.n, self.world)
        return [base + (r < extra) for r in range(self.world)]

    @property
    def index(self) -> slice:
        return slice(self.lo, self.hi)

    def take(self, volume: Tensor) -> Tensor:
        """This rank's block of a whole-volume tensor (slices on axis 0)."""
        if volume.shape[0] != self.n:
            raise DdipError(f"expected a volume of {self.n} slices, got {volume.shape[0]}")
        return volume[self.lo : self.hi]

    # -- collectives (every rank must call them, in the same order) ------------------------------------------
    def _count(self, kind: str, t: Tensor) -> None:
        self.traffic[kind] += t.numel() * t.element_size()

    def sum(self, t: Tensor, kind: str = "cg_inner_products") -> Tensor:
        """``t`` summed over the ranks (an all-reduce; no gradient: used where nothing is differentiated)."""
        if self.world == 1:
            return t
        self._count(kind, t)
        out = t.detach().clone()
        dist.all_reduce(out)
        return out

    def _edges(self, block: Tensor) -> list[Tensor]:
        """The first and last slice of every rank's block, in rank order (one all-gather)."""
        edges = torch.stack([block[0], block[-1]]).contiguous()
        if self.world == 1:
            return [edges]
        self._count("halo", edges)
        out = [torch.empty_like(edges) for _ in range(self.world)]
        dist.all_gather(out, edges)
        return out

    def next_first(self, block: Tensor) -> Tensor:
        """The slice after this block: the next rank's first slice (circular: the last rank gets rank 0's)."""
        return self._edges(block)[(self.rank + 1) % self.world][0:1]

    def previous_last(self, block: Tensor) -> Tensor:
        """The slice before this block: the previous rank's last slice (circular)."""
        return self._edges(block)[(self.rank - 1) % self.world][1:2]

    def gather_rows(self, block: Tensor, index: Tensor) -> Tensor:
        """The slices ``index`` (global, ascending) of the volume whose block this rank holds, on every rank.

        Each rank fills the rows it owns and the rest are zero; one all-reduce then assembles them exactly (x + 0 = x).
        """
        rows = torch.zeros((index.numel(), *block.shape[1:]), dtype=block.dtype, device=block.device)
        mine = (index >= self.lo) & (index < self.hi)
        rows[mine] = block[index[mine] - self.lo]
        if self.world > 1:
            self._count("adaptation_slices", rows)
            dist.all_reduce(rows)
        return rows

    def gather_volume(self, block: Tensor) -> Tensor:
        """The whole volume on every rank (blocks may differ in size by one slice)."""
        if self.world == 1:
            return block
        sizes = self.sizes
        pad = max(sizes)
        padded = torch.zeros((pad, *block.shape[1:]), dtype=block.dtype, device=block.device)
        padded[: block.shape[0]] = block
        self._count("result", padded)
        out = [torch.empty_like(padded) for _ in range(self.world)]
        dist.all_gather(out, padded)
        return torch.cat([o[:s] for o, s in zip(out, sizes)])


class ShardedPhysics:
    """The operator of one rank's block of slices, marked with its :class:`Shard` (solvers read ``.shard``).

    ``A``, ``A_adjoint``, ``normal``, ``A_dagger`` and ``subset`` act on the block (``subset`` indices are relative
    to it); ``whole`` is the operator of the whole volume.
    """

    def __init__(self, physics, shard: Shard):
        self.whole, self.shard = physics, shard
        self.local = physics_subset(physics, shard.index)

    def A(self, x: Tensor) -> Tensor:
        return self.local.A(x)

    def A_adjoint(self, y: Tensor) -> Tensor:
        return self.local.A_adjoint(y)

    def normal(self, x: Tensor) -> Tensor:
        return normal_of(self.local)(x)

    def A_dagger(self, y: Tensor) -> Tensor:
        return pseudo_inverse(self.local, y)

    def subset(self, index):
        return physics_subset(self.local, index)

    def __getattr__(self, name: str):  # img_complex, to_data_grid, ... of the wrapped operator
        if name in ("whole", "shard", "local"):
            raise AttributeError(name)
        return getattr(self.local, name)


def split(shard: Shard | None, y: Tensor, physics):
    """``(y, physics)`` of this rank's block of slices (unchanged without a shard): what a sharded solve runs on."""
    return (y, physics) if shard is None else (shard.take(y), ShardedPhysics(physics, shard))


def shard_of(physics) -> Shard | None:
    """The :class:`Shard` an operator is marked with, or None for a whole volume in one process."""
    return getattr(physics, "shard", None) if isinstance(physics, ShardedPhysics) else None
