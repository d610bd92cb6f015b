"""Is a download host reachable? Checked before a model or image download so that an offline
machine fails in a second with an error that names the local-file flag, instead of after the
libraries' own minute of retries."""

import os
import socket
from urllib.parse import urlparse

PROXY_VARIABLES = ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy")
OFFLINE_VARIABLES = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")


def hub_url():
    """The Hugging Face endpoint the hub clients will use."""
    return os.environ.get("HF_ENDPOINT", "https://huggingface.co")


def offline_requested():
    """True when the user asked the hub clients to stay offline."""
    return any(os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on") for name in OFFLINE_VARIABLES)


def reachable(url, timeout=3.0):
    """True when ``url``'s host resolves and accepts a TCP connection within ``timeout`` seconds.

    Behind a proxy the host itself may not resolve locally, so a configured proxy counts as
    reachable and the download library decides.
    """
    if any(os.environ.get(name) for name in PROXY_VARIABLES):
        return True
    parsed = urlparse(url)
    host = parsed.hostname
    if not host:
        return False
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def hub_reachable(timeout=3.0):
    """True when hub downloads can be attempted (not offline by request, host reachable)."""
    return not offline_requested() and reachable(hub_url(), timeout)
