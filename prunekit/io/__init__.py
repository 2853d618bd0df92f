"""Save pruned models to a directory and load them back, exactly.

Structured pruning can leave every block with its own sizes, which a Hugging Face config (one
``intermediate_size``, one ``num_attention_heads`` ...) cannot describe, and bias compensation can add
biases the family's config never asks for. :func:`save_pretrained` therefore writes an ordinary
Hugging Face directory (safetensors weights, ``config.json``, tokenizer) whose ``config.json`` carries a
``prunekit`` section with the per-block sizes, the added biases and the pruning record.
:func:`from_pretrained` builds the model from the config, lets the family's adapter reshape every block
to the recorded sizes, creates the added biases and only then loads the weights -- strictly: every
tensor present, every shape equal, nothing left over, or a :class:`CheckpointError` that names the
tensor. transformers 5 has a ``per_layer_config`` mechanism, but the Llama, Mamba and Mamba-2 classes
do not read it (building one raises ``AmbiguousGlobalPerLayerAttributeError``), so it cannot be used.

When every block has the same sizes the top-level config fields hold them, so a plain
``AutoModelForCausalLM.from_pretrained`` rebuilds the same model; added biases are then expressed with
the family's bias flag (``attention_bias``, ``mlp_bias``, ``use_bias``) plus zero biases for the other
modules that flag covers, which :func:`from_pretrained` drops again. When blocks differ (or a bias
sits where no flag reaches, such as Mamba's ``x_proj``), the top-level fields keep the sizes before
pruning, so a plain loader stops with transformers' own size-mismatch error instead of loading a
wrong model.

Nothing here uses pickle: weights and masks are safetensors, everything else JSON.
"""

from .format import FORMAT, MASKS_FILE, REPORT_FILE, SPARSITY_FILE, CheckpointError
from .load import from_pretrained, is_prunekit_dir, load_masks
from .save import save_pretrained

__all__ = [
    "FORMAT",
    "MASKS_FILE",
    "REPORT_FILE",
    "SPARSITY_FILE",
    "CheckpointError",
    "from_pretrained",
    "is_prunekit_dir",
    "load_masks",
    "save_pretrained",
]
