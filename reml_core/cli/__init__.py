"""The console scripts: ``reml-run``, ``reml-bench`` and ``reml-plugins``."""
