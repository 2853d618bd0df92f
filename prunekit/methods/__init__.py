"""What to prune and how much: scorers (one file each in :mod:`.scorers`), the calibration statistics they
declare (one file each in :mod:`.statistics`), selection of the lowest scores (:mod:`.select`), per-block
allocation (:mod:`.allocation`), structured budgets and searches (:mod:`.budgets`), and what shrunk
consumers get back (:mod:`.compensation`, :mod:`.refit`). Methods see tensors and groups, never a
model's forward: running calibration (hooks, backward passes, collectives) is the engine's job."""
