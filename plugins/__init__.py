"""REML's built-in plugins, importable as ``reml_plugins.<name>`` and declared in the ``reml.plugins`` entry-point
group."""
