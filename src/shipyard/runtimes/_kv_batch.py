"""The decoding batch of the transformers engine: the KV caches of several sequences of different
lengths held as one left-padded cache, so one forward pass advances all of them by a token.

Rows join (a sequence whose prompt is done) and leave (finished, cancelled) between steps; only
then are the tensors rebuilt, padding the shorter side on the left and trimming columns that
became padding in every row. Each row keeps its true positions (`position_ids`), and the
attention mask hides its padding, so a row decodes as it would alone.
"""

from __future__ import annotations

from typing import Any

Layers = list[tuple[Any, Any]]  # per layer: keys and values, [batch, heads, length, head_dim]


def cache_layers(cache: Any) -> Layers:
    """The key and value tensors of a transformers `DynamicCache`, layer by layer."""
    if hasattr(cache, "layers"):  # transformers >= 4.56
        return [(layer.keys, layer.values) for layer in cache.layers]
    return list(zip(cache.key_cache, cache.value_cache, strict=True))


def new_cache(layers: Layers) -> Any:
    from transformers import DynamicCache

    cache = DynamicCache()
    for index, (keys, values) in enumerate(layers):
        cache.update(keys, values, index)
    return cache


class PaddedBatch:
    """Rows (any objects) decoding together, their caches merged into one."""

    def __init__(self, torch: Any, device: Any) -> None:
        self._torch = torch
        self._device = device
        self.rows: list[Any] = []
        self.cache: Any = None
        self._mask: Any = None  # [rows, length]: 1 for a real token, 0 for padding
        self._positions: list[int] = []  # each row's next position

    def __len__(self) -> int:
        return len(self.rows)

    def add(self, row: Any, cache: Any, length: int) -> None:
        """Join a sequence whose own cache holds its `length` tokens (its prompt)."""
        torch = self._torch
        layers = cache_layers(cache)
        mask = torch.ones((1, length), dtype=torch.long, device=self._device)
        if self.rows:
            width = self._mask.shape[1]
            merged = _pad_left(cache_layers(self.cache), length - width, torch)
            layers = _pad_left(layers, width - length, torch)
            self._mask = _pad_mask(self._mask, length - width, torch)
            mask = _pad_mask(mask, width - length, torch)
            layers = [
                (torch.cat([k0, k1]), torch.cat([v0, v1]))
                for (k0, v0), (k1, v1) in zip(merged, layers, strict=True)
            ]
            mask = torch.cat([self._mask, mask])
        self.cache, self._mask = new_cache(layers), mask
        self.rows.append(row)
        self._positions.append(length)

    def remove(self, leaving: set[Any]) -> None:
        """Drop rows; columns that are padding in every row left are trimmed."""
        keep = [i for i, row in enumerate(self.rows) if row not in leaving]
        if len(keep) == len(self.rows):
            return
        self.rows = [self.rows[i] for i in keep]
        self._positions = [self._positions[i] for i in keep]
        if not keep:
            self.cache = self._mask = None
            return
        torch = self._torch
        index = torch.tensor(keep, device=self._device)
        mask = self._mask.index_select(0, index)
        first = int(mask.any(0).nonzero()[0])  # the first column some row still uses
        self._mask = mask[:, first:]
        self.cache = new_cache(
            [
                (k.index_select(0, index)[:, :, first:], v.index_select(0, index)[:, :, first:])
                for k, v in cache_layers(self.cache)
            ]
        )

    def forward(self, model: Any, cache_argument: str, tokens: list[int]) -> Any:
        """Each row's next-token logits after its token in `tokens` ([rows, vocab])."""
        torch = self._torch
        rows = len(self.rows)
        input_ids = torch.tensor(tokens, dtype=torch.long, device=self._device).view(rows, 1)
        mask = torch.cat([self._mask, torch.ones((rows, 1), dtype=torch.long, device=self._device)], dim=1)
        positions = torch.tensor(self._positions, dtype=torch.long, device=self._device).view(rows, 1)
        out = model(
            input_ids=input_ids,
            attention_mask=mask,
            position_ids=positions,
            use_cache=True,
            **{cache_argument: self.cache},
        )
        self._mask = mask
        self._positions = [p + 1 for p in self._positions]
        return out.logits[:, -1]


def _pad_left(layers: Layers, columns: int, torch: Any) -> Layers:
    if columns <= 0:
        return layers
    padded = []
    for keys, values in layers:
        padded.append((_pad_tensor(keys, columns, torch), _pad_tensor(values, columns, torch)))
    return padded


def _pad_tensor(tensor: Any, columns: int, torch: Any) -> Any:
    shape = (tensor.shape[0], tensor.shape[1], columns, tensor.shape[3])
    return torch.cat([torch.zeros(shape, dtype=tensor.dtype, device=tensor.device), tensor], dim=2)


def _pad_mask(mask: Any, columns: int, torch: Any) -> Any:
    if columns <= 0:
        return mask
    zeros = torch.zeros((mask.shape[0], columns), dtype=mask.dtype, device=mask.device)
    return torch.cat([zeros, mask], dim=1)
