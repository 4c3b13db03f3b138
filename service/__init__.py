"""Digit-recognition web service."""
