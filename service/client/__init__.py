"""Clients of a running service (``python -m service classify``)."""
