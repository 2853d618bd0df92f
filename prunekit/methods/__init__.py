"""What to prune and how much: scorers (one file each in :mod:`.scorers`), selection of the lowest scores
(:mod:`.select`), per-block allocation (:mod:`.allocation`), structured budgets and searches
(:mod:`.budgets`), and the least-squares refit (:mod:`.refit`). Methods see tensors and groups, never a
model's forward: running calibration is the engine's job."""
