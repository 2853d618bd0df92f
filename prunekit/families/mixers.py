"""What the Mamba families share: blocks at ``backbone.layers``, each with one ``mixer`` whose sizes
are restated from its weights after surgery."""

from __future__ import annotations

import torch

from .base import Adapter


class MixerAdapter(Adapter):
    """Base of the state-space families: each block's ``mixer`` restates its sizes (:meth:`sync_mixer`)."""

    def layers(self, model: torch.nn.Module) -> list[torch.nn.Module]:
        return list(model.backbone.layers)

    def sync(self, model: torch.nn.Module) -> None:
        super().sync(model)
        self.set_layer_fields(model, [self.sync_mixer(layer.mixer) for layer in self.layers(model)])

    @staticmethod
    def sync_mixer(mix: torch.nn.Module) -> dict:
        """Restate one mixer's size attributes from its weights; return its per-layer config fields."""
        raise NotImplementedError
