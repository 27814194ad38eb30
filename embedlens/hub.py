"""One quick look at the Hugging Face hub before a model is fetched from it.

Without a network, huggingface_hub retries every file of a model for about a minute before it gives
up. One TCP connection to the hub, with a short timeout, tells the same: when it fails, this process
switches huggingface_hub to offline mode (as ``HF_HUB_OFFLINE=1`` would), so loaders take the model
from the local cache or fail at once, and the backbone's own error says what to set.
"""

from __future__ import annotations

import os
import socket
from urllib.parse import urlsplit

import huggingface_hub.constants


def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the hub (``HF_ENDPOINT``, default https://huggingface.co) accepts a TCP connection
    within ``timeout`` seconds."""
    endpoint = urlsplit(huggingface_hub.constants.ENDPOINT)
    port = endpoint.port or (443 if endpoint.scheme == "https" else 80)
    try:
        socket.create_connection((endpoint.hostname, port), timeout=timeout).close()
    except OSError:
        return False
    return True


def offline_unless_hub_reachable(timeout: float = 3.0) -> bool:
    """Switch this process to the hub's offline mode when the hub is unreachable (unless it is in
    offline mode already); returns whether the process is now offline."""
    if huggingface_hub.constants.HF_HUB_OFFLINE:
        return True
    if hub_reachable(timeout):
        return False
    os.environ["HF_HUB_OFFLINE"] = "1"  # for child processes
    huggingface_hub.constants.HF_HUB_OFFLINE = True  # read by huggingface_hub and transformers at each call
    return True
