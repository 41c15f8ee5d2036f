"""The bytes and offsets under an Arrow string array, for compiled loops that walk many strings at once."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc


def string_buffers(strings: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """The UTF-8 bytes and int64 offsets of an Arrow string array (no copy of the bytes when already
    a large_string array; nulls are not expected and read as empty)."""
    large = pc.cast(strings, pa.large_string()) if strings.type != pa.large_string() else strings
    _, offsets_buf, data_buf = large.buffers()
    offsets = np.frombuffer(offsets_buf, np.int64)[large.offset:large.offset + len(large) + 1]
    data = np.frombuffer(data_buf, np.uint8) if data_buf is not None and data_buf.size else np.zeros(1, np.uint8)
    return data, offsets
