"""The Python client of the service: `TitokClient` (sync) and `AsyncTitokClient` (asyncio), on httpx.

    from titok.client import TitokClient
    with TitokClient("http://127.0.0.1:8000") as tk:      # key: api_key=... or TITOK_API_KEY
        tokens = tk.encode(["a.jpg", "b.png"])            # np.ndarray (2, K)
        images = tk.decode(tokens)                        # [PIL.Image, PIL.Image]

Both split large inputs into requests within the server's limits (read once from /info), use the `.npy`
array formats where the server has them, retry a 503 honouring Retry-After, and raise `TitokError`.
"""

from .aio import AsyncTitokClient
from .core import Retry, TargetTokens, TitokError
from .sync import TitokClient

__all__ = ["AsyncTitokClient", "Retry", "TargetTokens", "TitokClient", "TitokError"]
