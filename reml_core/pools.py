"""Index bookkeeping that layer pools share: a pool's global indices over its roles.

A pool holds its layers per role (input, hidden, output) and numbers them globally in that order:
indices ``0 .. n_input-1`` are the input layers, then the hidden ones, then the output ones. The
policy chooses global indices; a pool keeps each role's layers in one stacked tensor and needs the
local row. :class:`RoleIndex` converts one to the other and lays out a batch of index lists slot by
slot, the same way for every pool (``dense`` and ``conv`` use it).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np
import torch

from reml_core.interfaces import Role


class RoleIndex:
    """A pool's global indices over its roles, numbered in the order of ``counts`` (role -> how many layers)."""

    def __init__(self, counts: Mapping[Role, int]) -> None:
        self.roles: list[Role] = [role for role, count in counts.items() for _ in range(count)]
        self.size = len(self.roles)
        self._role_order: list[Role] = list(counts)
        self._role_codes = np.array([self._role_order.index(role) for role in self.roles], dtype=np.int64)
        self.offsets: dict[Role, int] = {}
        start = 0
        for role, count in counts.items():
            self.offsets[role] = start
            start += count

    def locate(self, index: int) -> tuple[Role, int]:
        """The role of a pool index and its position among that role's layers."""
        if not 0 <= index < self.size:
            raise IndexError(f"pool index {index} is outside 0..{self.size - 1}")
        role = self.roles[index]
        return role, index - self.offsets[role]

    def slot_rows(
        self,
        indices: Sequence[Sequence[int]],
        locate: Callable[[Sequence[int]], list[tuple[Role, int]]] | None = None,
        device: torch.device | str | None = None,
    ) -> list[tuple[Role, torch.Tensor]]:
        """Per slot of a batch of networks: its role (the same in every network, or they cannot be
        stacked) and the local rows, one per network. ``locate`` maps one index list to its
        (role, local) pairs (default: :meth:`locate` on each index; a pool may check more, e.g. the order)."""
        if not indices:
            raise ValueError("a batch needs at least one network")
        depths = {len(chosen) for chosen in indices}
        if len(depths) != 1:
            raise ValueError(f"networks of one batch must have one depth, got {sorted(depths)}")
        if locate is None:
            return self._slot_rows_of(indices, device)
        located = [locate(chosen) for chosen in indices]
        slots = []
        for slot in range(depths.pop()):
            roles = {rows[slot][0] for rows in located}
            if len(roles) != 1:
                raise ValueError(
                    f"slot {slot} holds layers of roles {sorted(r.value for r in roles)}; a batch needs one role per "
                    "slot"
                )
            slots.append((roles.pop(), torch.tensor([rows[slot][1] for rows in located], device=device)))
        return slots

    def _slot_rows_of(
        self, indices: Sequence[Sequence[int]], device: torch.device | str | None
    ) -> list[tuple[Role, torch.Tensor]]:
        """:meth:`slot_rows` with :meth:`locate` on each index, for the whole batch at once (the candidate scores
        of ``env.candidate_loss`` lay out thousands of networks per step)."""
        table = np.asarray(indices, dtype=np.int64)
        outside = (table < 0) | (table >= self.size)
        if outside.any():
            raise IndexError(f"pool index {int(table[outside][0])} is outside 0..{self.size - 1}")
        roles = self._role_codes[table]
        slots = []
        for slot in range(table.shape[1]):
            codes = np.unique(roles[:, slot])
            if len(codes) != 1:
                names = sorted(self._role_order[code].value for code in codes)
                raise ValueError(f"slot {slot} holds layers of roles {names}; a batch needs one role per slot")
            role = self._role_order[int(codes[0])]
            slots.append((role, torch.as_tensor(table[:, slot] - self.offsets[role], device=device)))
        return slots
