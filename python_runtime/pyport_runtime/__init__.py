"""Worker-side helpers of pyport's own tools (``tools/pyport-run``): not a
public API of the ``erlang`` package."""
