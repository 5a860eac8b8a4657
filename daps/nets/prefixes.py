"""The distinct prefixes among K codes per input: what a teacher-forced pass needs to compute only once.

At position t the autoregressive encoder's hidden state is a function of the input x and the prefix z_<t alone.
The K codes sampled for one input often share prefixes (always the empty one at t = 0; later ones as the
encoder grows confident), and every shared prefix is the same computation repeated. Here each distinct pair
(input, prefix) is a *node*: the token-wise parts of a pass (projections, MLPs, the output head, the softmax over
V) run once per node, and only the attention, which needs each row's keys in place, runs over the rows.

``node_of`` maps every entry ``(row, t)`` of the codes to its node; ``first`` picks, for every node, its first entry
(all entries of a node have the same prefix, so any one would do). Nodes are numbered position by position,
so the nodes of position t come before those of t + 1.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class PrefixNodes:
    """The node of every entry of codes ``(N, T)``: ``node_of (N*T,)`` (row-major), and ``first (M,)``, the flat
    index ``row * T + t`` of the first entry of each of the M nodes."""

    node_of: torch.Tensor
    first: torch.Tensor

    @property
    def count(self) -> int:
        """M, the number of distinct (input, prefix) pairs."""
        return self.first.numel()

    def gather(self, node_values: torch.Tensor) -> torch.Tensor:
        """Per-node values ``(M, ...)`` -> per-entry values ``(N*T, ...)``."""
        return node_values.index_select(0, self.node_of)

    def pick(self, entry_values: torch.Tensor) -> torch.Tensor:
        """Per-entry values ``(N*T, ...)`` -> the values at each node's entry ``(M, ...)``."""
        return entry_values.index_select(0, self.first)


def prefix_nodes(codes: torch.Tensor, group_size: int, vocab_size: int) -> PrefixNodes:
    """The nodes of codes ``(N, T)`` int64 whose rows come in groups of ``group_size`` per input (row r belongs to
    input ``r // group_size``, the b-major layout of K samples per input); codes in ``[0, vocab_size)``.

    Position by position: a node at t is identified by its parent node at t - 1 and the token z_{t-1} (at t = 0, by
    the input alone), so one ``torch.unique`` over N integers per position names them all.
    """
    n, t = codes.shape
    if codes.numel() and not (0 <= int(codes.min()) and int(codes.max()) < vocab_size):
        # out of range, a code would alias another node's (ids * V + code) where the whole pass raises
        raise IndexError(f"codes must be in [0, {vocab_size}), got values in [{int(codes.min())}, "
                         f"{int(codes.max())}]")
    ids = torch.arange(n, device=codes.device) // group_size  # (N,): at t = 0 the node is the input
    columns, offset = [], 0
    for pos in range(t):
        key = ids * vocab_size + codes[:, pos - 1] if pos else ids  # (N,): the parent node and the token after it
        distinct, ids = torch.unique(key, return_inverse=True)
        columns.append(ids + offset)
        offset += distinct.numel()
    node_of = torch.stack(columns, 1).view(-1)  # (N*T,) row-major
    entries = torch.arange(n * t, device=codes.device)
    # The first entry of each node (any would do: all share its prefix; the first keeps it the same on every device)
    first = entries.new_full((offset,), n * t).scatter_reduce_(0, node_of, entries, "amin")  # (M,)
    return PrefixNodes(node_of, first)
