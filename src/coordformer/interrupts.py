"""Ctrl-C while Python is importing a module: exit at once with one line instead of a traceback.

The first seconds of a command are spent importing numpy, torch and Lightning. A KeyboardInterrupt
raised part-way through such an import leaves half-initialised modules behind, and whatever runs
next fails with an unrelated error (seen: a raw traceback, ``RecursionError``, ``AttributeError:
module 'numpy._core' has no attribute '_multiarray_umath'``, exit status 1 or 2). An import writes
nothing anyone needs, so exiting there at once (status 130) loses nothing. Anywhere else Ctrl-C
raises KeyboardInterrupt as usual; training installs its own handler (train/run.py) that
checkpoints at the next step boundary.

Standard library only: ``python -m coordformer`` installs this before importing anything else.
"""

from __future__ import annotations

import os
import signal
import sys
import threading

MESSAGE = "interrupted"


def _importing(frame) -> bool:
    while frame is not None:
        if frame.f_code.co_filename.startswith("<frozen importlib"):
            return True
        frame = frame.f_back
    return False


def _on_sigint(signum, frame) -> None:
    if _importing(frame):
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:  # noqa: BLE001 - a closed or broken stream: exit all the same
                pass
        os.write(2, (MESSAGE + "\n").encode())
        os._exit(128 + signum)
    raise KeyboardInterrupt


def install():
    """Take over SIGINT; returns the handler it replaced (to restore), or None when it left it
    alone: not the main thread, or SIGINT ignored (``nohup``, a background job of a script)."""
    if threading.current_thread() is not threading.main_thread():
        return None
    previous = signal.getsignal(signal.SIGINT)
    if previous in (signal.SIG_IGN, _on_sigint):
        return None
    signal.signal(signal.SIGINT, _on_sigint)
    return previous


def restore(previous) -> None:
    if previous is not None and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, previous)
