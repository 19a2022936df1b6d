"""edgeroute: hybrid edge/cloud text classification for customer support."""

__version__ = "0.1.0"
