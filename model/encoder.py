"""The AnySat encoder: per-modality tokenizers -> shared patch encoder -> joint transformer ->
cross-attention combiner (paper §3.1; official implementation described in the reference doc §1).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from .config import AnySatConfig
from .inputs import DENSE_LAYOUTS, ModalityPlan, Plan, plan_inputs
from .layers.attention import Block, CombinerBlock
from .layers.cache import constant_cache
from .layers.pos_embed import grid_pos_embed
from .layers.rpe import rpe_buckets
from .sensors import SENSORS, Tokenizer
from .tokenizers import LTAETokenizer, VHRTokenizer

_EPS_PATCH = 1e-5  # LayerNorm eps in tokenizers and the patch encoder
_EPS_JOINT = 1e-6  # ... and in the joint blocks and combiner (the official values differ)


class PatchEncoder(nn.Module):
    """The shared ``phi^trans``: sub-patch tokens + GSD-aware positions -> one token per patch.

    Runs on ``[B·P, 1 + S, D]`` (a class token, then the ``g x g`` sub-patches); positions are in
    metres (cell index × sub-patch size) and the contextual RPE works on the ``g x g`` grid.
    """

    def __init__(self, dim: int, depth: int, heads: int, mlp_ratio: float) -> None:
        super().__init__()
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.blocks = nn.ModuleList(
            Block(dim, heads, mlp_ratio, eps=_EPS_PATCH, rpe=True) for _ in range(depth)
        )
        self.norm = nn.LayerNorm(dim, eps=_EPS_PATCH)

    def forward(self, tokens: torch.Tensor, subgrid: int, unit: float) -> torch.Tensor:
        """``[B·P, S, D]`` -> ``[B·P, 1 + S, D]`` (index 0 is the patch embedding)."""
        d = tokens.shape[-1]
        x = torch.cat([self.cls_token.expand(tokens.shape[0], -1, -1), tokens], dim=1)
        x = x + grid_pos_embed(subgrid, d, unit).to(x)
        buckets = rpe_buckets(subgrid, 1)
        for block in self.blocks:
            x = block(x, buckets)
        return self.norm(x)


class AnySat(nn.Module):
    """Any subset of the 11 sensors, any tile size, any patch size -> tile / patch / dense vectors.

    Call it like the official model::

        model(data, patch_size=20, output="dense", output_modality="aerial")

    with ``data = {"aerial": [B, 4, H, W], "s2": [B, T, 10, h, w], "s2_dates": [B, T], ...}`` —
    dates are day of year, 1 January = 1. Optional ``<m>_date_mask [B, T]`` (True = real date)
    makes padded dates invisible; optional ``<m>_mask [B, T, 1|C, H, W]`` (1 = valid) replaces
    invalid values by the sensor's learned missing-value scalar (official behaviour).
    Outputs are channels-last: tile ``[B, D]``, patch ``[B, n, n, D]``, all ``[B, 1 + n², D]``,
    dense ``[B, n·g, n·g, 2D]`` (patch embedding ‖ sub-patch embedding of ``output_modality``).
    """

    def __init__(self, config: AnySatConfig) -> None:
        super().__init__()
        self.config = config
        d = config.embed_dim
        self.cls_token = nn.Parameter(torch.zeros(1, 1, d))
        self.projectors = nn.ModuleDict({m: _make_tokenizer(m, d) for m in config.modalities})
        self.patch_encoder = PatchEncoder(d, config.depth, config.num_heads, config.mlp_ratio)
        self.joint_blocks = nn.ModuleList(
            Block(d, config.num_heads, config.mlp_ratio, eps=_EPS_JOINT,
                  flash_layout_bug=config.flash_layout_bug)
            for _ in range(config.depth)
        )
        self.combiner = CombinerBlock(d, config.num_heads, config.mlp_ratio, eps=_EPS_JOINT)
        self._init_weights()

    @property
    def embed_dim(self) -> int:
        return self.config.embed_dim

    def missing_value(self, name: str) -> float | None:
        """The learned value that replaces a series' inputs flagged invalid by ``<name>_mask`` (what a graph
        without mask inputs must be fed instead); None for a sensor that takes no mask or is not in the model."""
        projector = self.projectors[name] if name in self.projectors else None  # noqa: SIM401 (ModuleDict)
        return float(projector.pad_parameter) if isinstance(projector, LTAETokenizer) else None

    def _init_weights(self) -> None:
        for p in (self.cls_token, self.patch_encoder.cls_token, self.combiner.attn.q_learned):
            nn.init.trunc_normal_(p, std=0.02)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    # -- public API -------------------------------------------------------------------------------

    def forward(self, data: Mapping[str, torch.Tensor], patch_size: int = 10, output: str = "tile",
                output_modality: str | None = None, dense_layout: str = "spatial") -> torch.Tensor:
        plan = plan_inputs(data, patch_size, output, output_modality)
        missing = [m.name for m in plan.modalities if m.name not in self.projectors]
        if plan.context is not None and "modis" not in self.projectors:
            missing.append("modis")
        if missing:
            raise ValueError(f"this model has no projector for {missing}; it was built for "
                             f"{list(self.config.modalities)}")
        if dense_layout not in DENSE_LAYOUTS:
            raise ValueError(f"dense_layout must be one of {DENSE_LAYOUTS}, got {dense_layout!r}")
        return self.forward_planned(data, plan, dense_layout)

    def forward_planned(self, data: Mapping[str, torch.Tensor], plan: Plan,
                        dense_layout: str = "spatial") -> torch.Tensor:
        """The forward pass for an already validated plan (what export traces)."""
        patch_tokens, sub_tokens, context = self.forward_modalities(data, plan)
        fused = self.forward_fusion(patch_tokens, context, plan)  # (B, 1 + P, D)
        return self.select_output(fused, sub_tokens, plan, dense_layout)

    # -- stages -----------------------------------------------------------------------------------

    def forward_modalities(self, data: Mapping[str, torch.Tensor], plan: Plan
                           ) -> tuple[list[torch.Tensor], torch.Tensor | None, torch.Tensor | None]:
        """(1)-(2) Tokenize each modality and encode every patch.

        Returns the per-modality patch embeddings ``[B, P, D]`` (before the combiner's positional
        term), the dense modality's sub-patch tokens ``[B·P, S, D]`` if requested, and the MODIS
        context token ``[B, 1, D]`` if present.
        """
        patch_tokens, sub_tokens = [], None
        for m in plan.modalities:
            tokens = self._tokenize(data, m, plan.grid)  # (B·P, S, D)
            encoded = self.patch_encoder(tokens, m.subgrid, m.sensor.subpatch)  # (B·P, 1 + S, D)
            patch_tokens.append(encoded[:, 0].reshape(-1, plan.n_patches, self.embed_dim))
            if m.name == plan.output_modality:
                sub_tokens = encoded[:, 1:]
        context = None
        if plan.context is not None:
            tokens = self._tokenize(data, plan.context, 1)  # (B, 1, D)
            context = self.patch_encoder(tokens, 1, plan.context.sensor.subpatch)[:, :1]
        return patch_tokens, sub_tokens, context

    def forward_fusion(self, patch_tokens: list[torch.Tensor], context: torch.Tensor | None,
                       plan: Plan) -> torch.Tensor:
        """(3)-(5) Joint transformer over all modalities' patches, then the combiner."""
        d, k = self.embed_dim, len(patch_tokens)
        n_skip = 1 if context is None else 2
        pos = grid_pos_embed(plan.grid, d, float(plan.scale), n_skip)  # (n_skip + P, D)
        patch_pos = pos[n_skip:].to(patch_tokens[0])
        b = patch_tokens[0].shape[0]
        tokens = [self.cls_token.expand(b, -1, -1)]
        if context is not None:
            tokens.append(context)  # no position: MODIS covers the whole tile
        tokens += [t + patch_pos for t in patch_tokens]
        x = torch.cat(tokens, dim=1)  # (B, n_skip + K·P, D)
        for block in self.joint_blocks:
            x = block(x)
        fused = self.combiner(x, pos, _combiner_buckets(plan.grid, n_skip, k))  # (B, n_skip + P, D)
        if context is not None:
            fused = torch.cat([fused[:, :1], fused[:, 2:]], dim=1)  # drop the MODIS query
        return fused

    def select_output(self, fused: torch.Tensor, sub_tokens: torch.Tensor | None, plan: Plan,
                      dense_layout: str) -> torch.Tensor:
        n, d = plan.grid, self.embed_dim
        if plan.output == "tile":
            return fused[:, 0]
        if plan.output == "all":
            return fused
        patches = fused[:, 1:].reshape(-1, n, n, d)  # (B, n, n, D)
        if plan.output == "patch":
            return patches
        assert sub_tokens is not None
        m = next(m for m in plan.modalities if m.name == plan.output_modality)
        g = m.subgrid
        if dense_layout == "spatial" and m.sensor.cells_per_10m > 1 and m.blocks_per_patch > 1:
            # only VHR patches of several multi-cell blocks are ordered block-major (see VHRTokenizer)
            sub_tokens = sub_tokens[:, _spatial_order(m.sensor.cells_per_10m, m.blocks_per_patch)]
        sub = sub_tokens.reshape(-1, n, n, g, g, d).permute(0, 1, 3, 2, 4, 5).reshape(-1, n * g, n * g, d)
        coarse = patches.repeat_interleave(g, dim=1).repeat_interleave(g, dim=2)
        return torch.cat([coarse, sub], dim=-1)

    def _tokenize(self, data: Mapping[str, torch.Tensor], m: ModalityPlan, grid: int) -> torch.Tensor:
        projector = self.projectors[m.name]
        x = data[m.name]
        if isinstance(projector, VHRTokenizer):
            return projector(x, m.blocks_per_patch, grid)
        date_mask = data.get(f"{m.name}_date_mask")
        return projector(x, data[f"{m.name}_dates"], m.pixels_per_patch, grid,
                         value_mask=data.get(f"{m.name}_mask"),
                         date_mask=None if date_mask is None else date_mask.to(torch.bool))


def _make_tokenizer(name: str, dim: int) -> nn.Module:
    s = SENSORS[name]
    if s.tokenizer is Tokenizer.VHR:
        return VHRTokenizer(s.channels, dim, s.kernel, s.cells_per_10m)
    return LTAETokenizer(s.channels, dim, s.date_period, in_norm=(name == "s2"))


@constant_cache
def _combiner_buckets(grid: int, n_skip: int, n_modalities: int) -> torch.Tensor:
    """``[n_skip + P, n_skip + K·P]``: the query-grid buckets, key part tiled once per modality."""
    b = rpe_buckets(grid, n_skip)
    return torch.cat([b[:, :n_skip], b[:, n_skip:].repeat(1, n_modalities)], dim=1)


@constant_cache
def _spatial_order(cells: int, blocks: int) -> torch.Tensor:
    """Index that reorders block-major VHR tokens into raster order within a patch.

    Raster cell ``(R, C)`` of a patch of ``blocks x blocks`` 10 m blocks, ``cells x cells`` each,
    holds token ``((R // cells)·blocks + C // cells)·cells² + (R % cells)·cells + C % cells``.
    """
    side = cells * blocks
    r, c = torch.arange(side).repeat_interleave(side), torch.arange(side).repeat(side)
    return ((r // cells) * blocks + c // cells) * cells * cells + (r % cells) * cells + c % cells
