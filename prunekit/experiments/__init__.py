"""Experiments built on :func:`prunekit.prune`: sweeps (:mod:`.sweep`) and studies (:mod:`.study`).
They call the public API only, never the engine's internals."""
