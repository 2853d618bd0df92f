"""Running a pruning plan on a model: block-wise calibration (:mod:`.calibration`), statistics
collection (:mod:`.stats`), gradients (:mod:`.gradients`), unstructured and structured execution,
surgery (:mod:`.surgery`), offloading to disk (:mod:`.offload`), data parallelism
(:mod:`.distributed`) and the report (:mod:`.report`)."""
