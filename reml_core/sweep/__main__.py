"""``python -m reml_core.sweep guard COMMAND...``: the guard a sweep trial's reml-run runs under
(:func:`reml_core.sweep.supervise.guard_main`). reml-sweep starts it itself; the Ray watchdog
(:mod:`reml_core.distributed`) recognises a trial's session by this command line."""

import sys

from reml_core.sweep.supervise import guard_main

if len(sys.argv) < 3 or sys.argv[1] != "guard":
    raise SystemExit("usage: python -m reml_core.sweep guard COMMAND [ARGS...] (reml-sweep starts this itself)")
raise SystemExit(guard_main(sys.argv[2:]))
