"""Linux prctl options procq needs: parent-death signal and child subreaper."""

from __future__ import annotations

import ctypes
import os
import signal

PR_SET_PDEATHSIG = 1
PR_SET_NAME = 15
PR_SET_CHILD_SUBREAPER = 36

_libc = ctypes.CDLL(None, use_errno=True)


def _prctl(option: int, value: int) -> None:
    if _libc.prctl(option, ctypes.c_ulong(value), 0, 0, 0) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"prctl({option}) failed: {os.strerror(errno)}")


def die_with_parent(expected_parent: int, sig: int = signal.SIGKILL) -> None:
    """Ask the kernel to send `sig` when the parent exits, then check the parent is still there.

    The check closes the race in which the parent died between fork() and prctl(): the
    child was then re-parented already and the death signal would never come.
    """
    _prctl(PR_SET_PDEATHSIG, sig)
    if os.getppid() != expected_parent:
        os._exit(1)


def become_subreaper() -> None:
    """Make orphaned descendants re-parent to this process instead of init."""
    _prctl(PR_SET_CHILD_SUBREAPER, 1)


def set_process_name(name: str) -> None:
    """Set the name shown by ps -o comm and top (at most 15 bytes)."""
    buffer = ctypes.create_string_buffer(name.encode()[:15])
    _libc.prctl(PR_SET_NAME, buffer, 0, 0, 0)
