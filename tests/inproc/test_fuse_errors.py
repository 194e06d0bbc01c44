"""The one OSError-to-FUSEError translation (:mod:`stackfs.runtime.fuseerr`), as the union's
handlers
and the backends' (:func:`backends.base.fuse_op`) give it: the errno kept, EIO without one."""

from __future__ import annotations

import errno
import types

import pyfuse3
import pytest

from backends.base import fuse_op
from stackfs.runtime.fuseerr import fuse_errors


async def _fails(exc: BaseException) -> None:
    raise exc


@pytest.mark.parametrize(
    ("exc", "want"),
    [(OSError(errno.ENOENT, "gone"), errno.ENOENT), (OSError("no errno"), errno.EIO)],
)
async def test_union_and_backends_translate_alike(exc: OSError, want: int) -> None:
    @fuse_errors
    async def union_handler() -> None:
        await _fails(exc)

    @fuse_op
    async def backend_handler(self: object) -> None:
        await _fails(exc)

    store = types.SimpleNamespace(panicked=False, kernel=types.SimpleNamespace())
    for call in (union_handler(), backend_handler(store)):
        with pytest.raises(pyfuse3.FUSEError) as ei:
            await call
        assert ei.value.errno == want


async def test_a_fuse_error_passes_through() -> None:
    @fuse_errors
    async def handler() -> None:
        await _fails(pyfuse3.FUSEError(errno.ENOSYS))

    with pytest.raises(pyfuse3.FUSEError) as ei:
        await handler()
    assert ei.value.errno == errno.ENOSYS
