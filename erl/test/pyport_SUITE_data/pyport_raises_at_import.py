"""A module whose import raises something other than ImportError."""
raise RuntimeError("pyport_raises_at_import fails while importing")
