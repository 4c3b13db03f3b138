"""Standard serving protocols, each a codec over the one data plane (dataplane.py)."""
