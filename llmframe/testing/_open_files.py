"""Raising this process's limit of open files, so that benchmarks can open thousands of
loopback connections to the fake server at once."""

from __future__ import annotations

__all__ = ["LISTEN_BACKLOG", "WANTED_OPEN_FILES", "raise_open_file_limit"]

# Benchmarks open thousands of connections at once; the kernel caps this at somaxconn.
LISTEN_BACKLOG = 4096
# Each loopback connection costs two descriptors when client and server share a process.
WANTED_OPEN_FILES = 16_384


def raise_open_file_limit() -> None:
    """Raise this process's soft limit of open files (best effort) so benchmarks can open
    thousands of connections; many systems start at 1024 (macOS at 256)."""
    try:
        import resource
    except ImportError:  # Windows has no such limit to raise
        return
    try:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        wanted = (
            WANTED_OPEN_FILES if hard == resource.RLIM_INFINITY else min(hard, WANTED_OPEN_FILES)
        )
        if soft != resource.RLIM_INFINITY and soft < wanted:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    except (OSError, ValueError):
        pass
