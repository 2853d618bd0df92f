"""The on-disk format shared by the writer and the loader: file names, the config section, errors."""

from __future__ import annotations

#: version of the ``prunekit`` config section; loaders refuse newer ones
FORMAT = 1
SECTION = "prunekit"
MASKS_FILE = "prunekit_masks.safetensors"
SPARSITY_FILE = "prunekit_sparsity.json"
REPORT_FILE = "prunekit_report.json"
#: masks written block by block (offloaded pruning); load_masks reads them along with MASKS_FILE
MASK_SHARDS = "prunekit_masks-*-of-*.safetensors"


def mask_shard(k: int, n: int) -> str:
    """File name of the ``k``-th of ``n`` mask shards (matches :data:`MASK_SHARDS`)."""
    return f"prunekit_masks-{k:05d}-of-{n:05d}.safetensors"


#: config attributes prunekit keeps on live models; saved inside the section instead of top-level
LIVE_KEYS = ("prunekit_layers", "prunekit_added_biases", "prunekit_records", "prunekit_base_fields")


class CheckpointError(ValueError):
    """A saved directory does not match its own config: a missing, extra or mis-shaped tensor."""
