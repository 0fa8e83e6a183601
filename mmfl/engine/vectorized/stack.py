"""Parameters of many clients stacked along a leading client dimension, read one client at a time.

The vectorized engine trains a chunk of clients as stacked tensors of shape ``(C, ...)``,
possibly on a GPU. Copying every client's weights to the host only to average them again
would cost more than the training (256 clients x 1.7M parameters is 1.7 GB per round), so a
trained chunk stays where it is, as a ``ClientStack``, and each client's update holds a
``StackView``: a read-only mapping ``name -> tensor`` that copies a client's row to the host
only when somebody reads it (an artifact writer, a custom aggregation). The server's common
operations read the stack directly instead, through the ``StackedRow`` interface of
``mmfl.state``: ``weighted_mean`` averages stacked rows with one
reduction per tensor, and ``row_summary`` gives the screening statistics of every row at once.

Views are read-only: a tensor obtained from a view on a GPU stack is a host copy, and writing
into it does not change the stack.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
import torch

from mmfl.state import RowSummary, StackedRow

# Float64 scratch memory a reduction may take at once (rows of a block x elements x 8 bytes).
_BLOCK_BYTES = 1 << 28


class ClientStack:
    """Tensors of ``C`` clients: ``stacked[key]`` is ``(C, ...)``; ``shared[key]`` is one tensor for all.

    ``order`` is the key order every client's view presents (stacked and shared keys mixed).
    """

    def __init__(self, stacked: dict[str, torch.Tensor], shared: dict[str, torch.Tensor], order: Sequence[str]):
        sizes = {int(v.shape[0]) for v in stacked.values()}
        if len(sizes) > 1:
            raise ValueError(f"stacked tensors disagree on the number of clients: {sorted(sizes)}")
        if set(order) != set(stacked) | set(shared) or set(stacked) & set(shared):
            raise ValueError("order must list every stacked and shared key exactly once")
        self.stacked, self.shared, self.order = stacked, shared, list(order)
        self.size = sizes.pop() if sizes else 0
        self._summaries: tuple[object, str, list[RowSummary]] | None = None

    def view(self, index: int) -> StackView:
        if not 0 <= index < self.size:
            raise IndexError(f"client row {index} out of range for a stack of {self.size}")
        return StackView(self, index, "")

    # ---- whole-stack statistics -----------------------------------------------------------------
    def row_summaries(self, reference: Mapping[str, torch.Tensor], prefix: str) -> list[RowSummary]:
        """``RowSummary`` of every row against ``reference`` (keys without ``prefix``); cached per reference."""
        cached = self._summaries
        if cached is not None and cached[0] is reference and cached[1] == prefix:
            return cached[2]
        nonfinite: list[tuple[str, int, int] | None] = [None] * self.size
        sq = torch.zeros(self.size, dtype=torch.float64)
        for key in self.order:
            value = self.stacked.get(key)
            per_row = value is not None
            if not per_row:
                value = self.shared[key].unsqueeze(0)
            part = None
            ref = reference.get(key[len(prefix):]) if key.startswith(prefix) else None
            if ref is not None and value.is_floating_point() and tuple(ref.shape) == tuple(value.shape[1:]):
                ref64 = ref.to(device=value.device, dtype=torch.float64)
                part = ((value.to(torch.float64) - ref64) ** 2).reshape(value.shape[0], -1).sum(1).cpu()
                sq += part if per_row else part.expand(self.size)
            # A float32 row against a finite reference squares without overflow in float64, so
            # finite sums prove finite values; otherwise count NaN and inf explicitly.
            proven = (part is not None and value.dtype in (torch.float32, torch.float16, torch.bfloat16)
                      and bool(torch.isfinite(part).all()) and bool(torch.isfinite(ref).all()))
            if proven or not (value.is_floating_point() or value.is_complex()):
                continue
            flat = value.reshape(value.shape[0], -1)
            counts = torch.stack([torch.isnan(flat).sum(1), (~torch.isfinite(flat)).sum(1)]).cpu().tolist()
            for j in range(self.size):
                r = j if per_row else 0
                if nonfinite[j] is None and counts[1][r] > 0:
                    nonfinite[j] = (key, int(counts[0][r]), int(counts[1][r]) - int(counts[0][r]))
        out = [RowSummary(nonfinite[j], float(sq[j])) for j in range(self.size)]
        self._summaries = (reference, prefix, out)
        return out


class StackView(StackedRow):
    """One client's row of a ``ClientStack``, keys under ``prefix`` with the prefix removed."""

    __slots__ = ("stack", "index", "prefix", "_keys", "_host")

    def __init__(self, stack: ClientStack, index: int, prefix: str):
        self.stack, self.index, self.prefix = stack, index, prefix
        self._keys = [k[len(prefix):] for k in stack.order if k.startswith(prefix)]
        self._host: dict[str, torch.Tensor] = {}

    @property
    def group(self) -> tuple[int, str]:
        return id(self.stack), self.prefix

    def strip(self, prefix: str) -> StackView:
        """The view of the keys that start with ``prefix``, named without it."""
        return StackView(self.stack, self.index, self.prefix + prefix)

    def __getitem__(self, name: str) -> torch.Tensor:
        full = self.prefix + name
        if full in self.stack.shared:
            return self.stack.shared[full]
        if full not in self.stack.stacked:
            raise KeyError(name)
        row = self.stack.stacked[full][self.index]
        if row.device.type == "cpu":
            return row
        host = self._host.get(full)
        if host is None:
            host = self._host[full] = row.cpu()
        return host

    def __iter__(self) -> Iterator[str]:
        return iter(self._keys)

    def __len__(self) -> int:
        return len(self._keys)

    def __contains__(self, name: object) -> bool:
        if not isinstance(name, str):
            return False
        full = self.prefix + name
        return full in self.stack.shared or full in self.stack.stacked

    def shape_dtype(self, name: str) -> tuple[torch.Size, torch.dtype]:
        """Shape and dtype of one tensor, without copying it to the host."""
        full = self.prefix + name
        if full in self.stack.shared:
            t = self.stack.shared[full]
            return t.shape, t.dtype
        t = self.stack.stacked[full]
        return t.shape[1:], t.dtype

    def summary(self, reference: Mapping[str, torch.Tensor]) -> RowSummary:
        """Screening statistics of this row (see ``RowSummary``); ``reference`` is keyed like this view."""
        return self.stack.row_summaries(reference, self.prefix)[self.index]

    @classmethod
    def accumulate(cls, acc: dict[str, torch.Tensor], rows: Sequence[StackedRow], fractions: Sequence[float]) -> None:
        accumulate_stacked(acc, rows, fractions)  # type: ignore[arg-type]


def accumulate_stacked(acc: dict[str, torch.Tensor], views: Sequence[StackView], fractions: Sequence[float],
                       blocked: bool | None = None) -> None:
    """``acc[key] += sum_j fractions[j] * view_j[key]`` (float64) for views of ONE stack.

    On an accelerator, one matrix-vector product per block of rows (no per-row launches, no
    copies to the host but the result); on the host, row by row, as for ordinary dicts.
    ``blocked`` forces one or the other.
    """
    stack, prefix = views[0].stack, views[0].prefix
    device = next(iter(stack.stacked.values())).device if stack.stacked else torch.device("cpu")
    indices = [v.index for v in views]
    index = torch.tensor(indices, dtype=torch.long, device=device)
    frac = torch.tensor(list(fractions), dtype=torch.float64, device=device)
    total = float(sum(fractions))
    whole = indices == list(range(stack.size))
    for key in acc:
        full = prefix + key
        if full in stack.shared:
            acc[key].add_(stack.shared[full].to(torch.float64), alpha=total)
            continue
        src = stack.stacked[full]
        if not (blocked if blocked is not None else src.device.type != "cpu"):
            # On the host, row after row stays in cache; big float64 blocks would only add page faults.
            for i, f in zip(indices, fractions):
                acc[key].add_(src[i].to(torch.float64), alpha=f)
            continue
        numel = max(1, src[0].numel())
        block = max(1, _BLOCK_BYTES // (8 * numel))
        part = torch.zeros(numel, dtype=torch.float64, device=device)
        for start in range(0, len(views), block):
            if whole:  # every row in order: read the stack in place, no gathered copy
                rows = src[start : start + block].reshape(-1, numel).to(torch.float64)
            else:
                rows = src.index_select(0, index[start : start + block]).reshape(-1, numel).to(torch.float64)
            part.addmv_(rows.t(), frac[start : start + block])
        acc[key].add_(part.reshape(acc[key].shape).to(acc[key].device))
