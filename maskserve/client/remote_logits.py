"""Low-res logits that stay on the service until they are read.

`Client.predict` returns one of these as `low_res_logits`: to NumPy (and anything that reads arrays through
`__array__`) it is the (C, M, M) float32 array `SamPredictor.predict` returns, fetched on first use. A view
that selects one whole mask — `logits[best][None]`, `logits[[best]]`, `logits[best:best + 1]` — passed back
as `mask_input` goes to the service as a handle (`Prompt.mask_from`), so the usual refinement loop never
moves the logits at all.
"""

from __future__ import annotations

import numpy as np


class RemoteLogits(np.lib.mixins.NDArrayOperatorsMixin):  # + - * > ... through __array_ufunc__
    def __init__(self, fetch, handle: bytes, count: int, side: int, key: tuple = ()) -> None:
        self._fetch, self.handle, self._count, self._side, self._key = fetch, handle, count, side, key
        self._cached: list[np.ndarray] = []

    def _apply(self, array: np.ndarray) -> np.ndarray:
        for k in self._key:
            array = array[k]
        return array

    def _probe(self) -> np.ndarray:
        """Each element's mask index, shaped as the data (no memory: a broadcast view)."""
        return self._apply(np.broadcast_to(np.arange(self._count, dtype=np.int16)[:, None, None],
                                           (self._count, self._side, self._side)))

    def mask_index(self) -> int | None:
        """The output index of the one whole mask this view is, shaped (1, M, M) or (M, M); else None."""
        probe = self._probe()
        if probe.shape not in ((1, self._side, self._side), (self._side, self._side)):
            return None
        k = int(probe.flat[0])
        whole = self._apply(np.broadcast_to(np.arange(self._side * self._side, dtype=np.int32).reshape(
            1, self._side, self._side), (self._count, self._side, self._side)))  # no crop, flip or transpose
        flat = np.arange(self._side * self._side, dtype=np.int32).reshape(probe.shape)
        return k if (probe == k).all() and np.array_equal(whole, flat) else None

    @property
    def shape(self) -> tuple[int, ...]:
        return self._probe().shape

    @property
    def ndim(self) -> int:
        return len(self.shape)

    dtype = np.dtype(np.float32)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, key) -> "RemoteLogits":
        view = RemoteLogits(self._fetch, self.handle, self._count, self._side, self._key + (key,))
        view._cached = self._cached  # views share one fetch
        return view

    def numpy(self) -> np.ndarray:
        if not self._cached:
            self._cached.append(self._fetch())
        return np.array(self._apply(self._cached[0]))

    def __array__(self, dtype=None, copy=None):
        out = self.numpy()
        return out if dtype is None else out.astype(dtype)

    def __getattr__(self, name):  # any other ndarray attribute or method (.T, .max(), .astype): on the data
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self.numpy(), name)

    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        inputs = tuple(x.numpy() if isinstance(x, RemoteLogits) else x for x in inputs)
        return getattr(ufunc, method)(*inputs, **kwargs)

    def __repr__(self) -> str:
        state = "fetched" if self._cached else "on the service"
        return f"RemoteLogits(shape={self.shape}, dtype=float32, {state})"
