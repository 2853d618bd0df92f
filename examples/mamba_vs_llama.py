"""The same structured and unstructured calls on a transformer and on Mamba / Mamba-2 models.

No pretrained Mamba weights ship offline, so this uses small random models: it shows which groups
the trace finds in each family and that one call prunes all of them.

    python examples/mamba_vs_llama.py
"""

from __future__ import annotations

import torch
from transformers import (
    LlamaConfig,
    LlamaForCausalLM,
    Mamba2Config,
    Mamba2ForCausalLM,
    MambaConfig,
    MambaForCausalLM,
)

import prunekit


def models() -> dict[str, torch.nn.Module]:
    torch.manual_seed(0)
    return {
        "llama": LlamaForCausalLM(
            LlamaConfig(
                vocab_size=256,
                hidden_size=64,
                intermediate_size=128,
                num_hidden_layers=2,
                num_attention_heads=4,
                num_key_value_heads=2,
            )
        ),
        "mamba": MambaForCausalLM(
            MambaConfig(vocab_size=256, hidden_size=64, state_size=8, num_hidden_layers=2)
        ),
        "mamba2": Mamba2ForCausalLM(
            Mamba2Config(
                vocab_size=256,
                hidden_size=64,
                state_size=8,
                num_hidden_layers=2,
                head_dim=16,
                num_heads=8,
                n_groups=2,
                chunk_size=16,
            )
        ),
    }


def main() -> None:
    calibration = torch.randint(0, 256, (8, 32), generator=torch.Generator().manual_seed(0))
    for name, model in models().items():
        model.eval()
        graph = prunekit.trace(model)
        print(f"== {name}: {len(graph.groups)} groups")
        for group in graph.groups:
            print(f"   [{group.role}] {group}")
        # round_to=8 keeps channel counts multiples of 8, so the 2:4 pattern below still fits every layer
        report = prunekit.prune(
            model, method="flap", sparsity=0.25, structure="structured", calibration=calibration, round_to=8
        )
        print(f"   flap 25 %: {report.params_before:,} -> {report.params_after:,} parameters")
        report = prunekit.prune(model, method="wanda", structure="2:4", calibration=calibration)
        print(f"   then wanda 2:4: {report.achieved:.1%} of targeted weights zero")
        print(
            "   generates:", model.generate(calibration[:1, :4], max_new_tokens=4, do_sample=False).tolist()
        )


if __name__ == "__main__":
    main()
