"""Readers that turn files and folders into a ``Volume``."""
