"""Worker-side helpers of pyport itself, not a public API of the ``erlang``
package: what ``tools/pyport-run`` runs in a worker, and what the C++
worker asks Python to do for it (``pyport_runtime.worker``)."""
