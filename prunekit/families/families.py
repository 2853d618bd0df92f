"""Further decoder families composed from the standard parts (filled as they pass the conformance suite)."""
