"""gevent monkey-patching, done once, as early as possible, and never twice.

Importing geboost patches the standard library (sockets, ``time.sleep``, ``threading``, ``ssl``,
``subprocess``, ...) so that blocking I/O inside the user's function yields to other greenlets:
that is what makes ``urllib``, ``requests`` or any plain client concurrent in the pool. Import
geboost (or ``gevent.monkey``) before anything that opens sockets or imports ``ssl``; otherwise
gevent warns that modules were patched after import.
"""

from __future__ import annotations

from gevent import monkey


def ensure_patched() -> None:
    """Patch the standard library unless it already is (by us or by the application)."""
    if not monkey.is_module_patched("socket"):
        monkey.patch_all()
