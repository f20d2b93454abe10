"""A module that cannot be imported: the worker must report it and live on."""
raise ImportError("pyport_broken_import is broken on purpose")
