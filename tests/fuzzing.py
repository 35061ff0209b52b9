"""What the fuzz tests share: mutations of a real file's bytes, odd values for the right
container, and the property every reader must keep (the right result or one RmpError line)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from rmp_cli.errors import RmpError

T = TypeVar("T")


def flip_bits(data: bytes, flips: list[tuple[int, int]]) -> bytes:
    out = bytearray(data)
    for position, bit in flips:
        out[position % len(out)] ^= 1 << bit
    return bytes(out)


def mutations(original: bytes) -> st.SearchStrategy[bytes]:
    """Damage as it happens: a cut (a crash, a full disk), flipped bits (a bad disk or copy),
    a spliced-in or dropped run of bytes, and plain noise (the wrong file)."""
    n = len(original)
    cut = st.integers(0, n - 1).map(lambda i: original[:i])
    flips = st.lists(st.tuples(st.integers(0, n - 1), st.integers(0, 7)), min_size=1, max_size=8)
    splice = st.tuples(st.integers(0, n), st.integers(0, 64), st.binary(max_size=32)).map(
        lambda t: original[: t[0]] + t[2] + original[t[0] + t[1] :]
    )
    return st.one_of(
        cut, flips.map(lambda f: flip_bits(original, f)), splice, st.binary(max_size=600)
    )


# Values of every kind, to put where a reader expects another one ("wrong types in the right
# container").
ODD_VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**40), 2**40),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=8),
    st.binary(max_size=8),
    st.lists(st.integers(-3, 3), max_size=4),
    st.dictionaries(st.text(max_size=4), st.integers(), max_size=3),
    st.sampled_from([torch.zeros(0), torch.ones(2, 3), torch.tensor(7), torch.tensor([1j])]),
)

TENSOR_DTYPES = st.sampled_from(
    [
        torch.float32,
        torch.float16,
        torch.float64,
        torch.int64,
        torch.uint8,
        torch.bool,
        torch.cfloat,
    ]
)


def odd_tensor(like: torch.Tensor) -> st.SearchStrategy[torch.Tensor]:
    """A tensor of the wrong shape or dtype for `like` (a state dict of the wrong shapes)."""
    shapes = st.lists(st.integers(0, 5), max_size=4).map(tuple)
    return st.one_of(
        shapes.map(lambda s: torch.zeros(s)),
        TENSOR_DTYPES.map(lambda d: torch.ones(like.shape).to(d)),
        st.just(like.flatten()),
        st.just(torch.full(like.shape, float("nan"))),
    )


def right_or_one_line(read: Callable[[], T]) -> T | None:
    """The property: `read()` returns (the caller checks the result), or raises one RmpError
    whose message is one line. Any other exception fails the test with its traceback."""
    try:
        return read()
    except RmpError as exc:
        message = str(exc)
        assert message and "\n" not in message, repr(message)
        return None


def both(
    check: Callable[..., None], *, examples: int | None = None, **strategies: st.SearchStrategy
) -> tuple[Any, Any]:
    """`check` as two tests: under the current profile (bounded, the default "ci"; `examples`
    bounds a slow reader further), and `slow`-marked under the deep profile."""
    fast = given(**strategies)(check)
    if examples is not None and settings.default.max_examples > examples:
        fast = settings(max_examples=examples)(fast)
    deep = pytest.mark.slow(settings(settings.get_profile("deep"))(given(**strategies)(check)))
    return fast, deep
