"""CRC32C (Castagnoli) through google-crc32c's C extension, typed for mypy.

The C functions take ``bytes`` (not memoryview); callers slice, which costs a memcpy that is
small next to the checksum itself.
"""

from __future__ import annotations

from collections.abc import Callable

import google_crc32c.cext as _cext

value: Callable[[bytes], int] = _cext.value  # type: ignore[attr-defined]
extend: Callable[[int, bytes], int] = _cext.extend  # type: ignore[attr-defined]
