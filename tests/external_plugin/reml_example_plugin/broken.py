"""A plugin module that cannot be imported, as a broken third-party plugin would be."""

raise ImportError("reml_example_plugin.broken needs a package that is not installed")
