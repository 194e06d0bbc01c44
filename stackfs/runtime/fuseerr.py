"""The one OSError-to-FUSEError translation of every daemon: a handler's failed syscall is the
reply ``-errno`` (libfuse's ``fuse_reply_err``), EIO when the exception carries no errno.

:func:`fuse_errors` wraps a handler of the union (:mod:`stackfs.union.fs`);
:func:`backends.base.fuse_op` adds the model's oops and panic to the same translation.
"""

from __future__ import annotations

import errno
import functools
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, ParamSpec, TypeVar

import pyfuse3

P = ParamSpec("P")
R = TypeVar("R")


def fuse_error(exc: OSError) -> pyfuse3.FUSEError:
    """The FUSEError carrying ``exc``'s errno (EIO when it has none)."""
    return pyfuse3.FUSEError(exc.errno or errno.EIO)


def fuse_errors(fn: Callable[P, Awaitable[R]]) -> Callable[P, Coroutine[Any, Any, R]]:
    """Turn an OSError of the handler ``fn`` into the FUSEError that carries its errno."""

    @functools.wraps(fn)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return await fn(*args, **kwargs)
        except OSError as exc:
            raise fuse_error(exc) from None

    return wrapper
