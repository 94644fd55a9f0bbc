"""Where the codec used to live: names kept for modules not moved yet.

The codec is ``_codec``; the process worker loop is
``_backends.process_worker``. Remove this module once nothing imports it
(``_backends/thread.py`` still does).
"""

from __future__ import annotations

from ._codec import FUNCTION_CACHE, PROTOCOL, encode_error, load_function

__all__ = ["FUNCTION_CACHE", "PROTOCOL", "encode_error", "load_function"]
