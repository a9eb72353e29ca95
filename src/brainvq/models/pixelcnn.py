"""Gated PixelCNN prior over VQ-VAE code grids, with cached row/step modules for fast exact sampling.

van den Oord et al. 2016, "Conditional Image Generation with PixelCNN Decoders", https://arxiv.org/abs/1606.05328:
vertical + horizontal stacks (no blind spot), gated tanh·sigmoid units, class-conditional gate biases.
Fast generation with explicit activation caches as in Ramachandran et al. 2017, "Fast Generation for Convolutional
Autoregressive Models", https://arxiv.org/abs/1704.06001: once per row the vertical stack advances one row
(:class:`PixelCNNRowStep`), once per code the horizontal stack advances one position (:class:`PixelCNNStep`).

Causality is built from kernel shapes and shifts, not from masks (nothing is edited in place, so it traces to ONNX);
the parameters are ``Conv2d`` weights, applied as matmuls over windows of shifted copies (see ``forward``):

* vertical conv, kernel ``(k//2+1, k)`` padded on top: its output at row ``i`` sees input rows ``i-k//2 .. i``
  (``i-d*k//2 .. i`` in steps of ``d`` when the layer is dilated by ``d``, and so on for the columns below);
  it reaches the horizontal stack shifted down one row, so position ``(i, j)`` sees only rows ``< i``;
* horizontal conv, kernel ``(1, k//2+1)`` padded on the left (mask 'B', sees columns ``j-k//2 .. j``); the first
  layer uses ``(1, k//2)`` shifted one more column (mask 'A', columns ``j-k//2 .. j-1``) and has no residual
  connection, so no output ever sees the code it predicts.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from brainvq.values import LEGACY_CLASSES


class PixelCNNOutput(NamedTuple):
    logits: torch.Tensor  # (B,K,h,w)


@dataclass(frozen=True)
class PixelCNNConfig:
    num_embeddings: int = 64
    num_layers: int = 12
    hidden_channels: int = 32
    conditional: bool = True
    # Labels 0..num_classes-1 are the classes named by ``classes`` (the class map of the training codes, which
    # fit_prior sets); label num_classes is the null (unconditional) label. 0 classes: codes of a flat layout, where
    # every slice has the null label. The defaults are the two-class map of every prior trained before class maps
    # were recorded (0 NC, 1 AD), which is what such a checkpoint rebuilds as (models.checkpoint.LEGACY_FIELDS).
    num_classes: int = 2
    classes: tuple[str, ...] = LEGACY_CLASSES
    kernel_size: int = 3
    code_shape: tuple[int, int] = (60, 64)  # (h, w)
    # Layer i > 0 dilates both stacks by dilation_cycle[i % len]; (1,) is the plain gated PixelCNN. A cycle such as
    # (1, 2, 4, 8, 16) widens what a code sees (rows above, codes to its left: ~12 -> ~60 codes over 12 layers) at
    # the same cost per layer, as WaveNet does (van den Oord et al. 2016, https://arxiv.org/abs/1609.03499).
    # train_prior defaults to that cycle; the field defaults to (1,) so checkpoints written before it existed
    # (whose config lacks the key) still rebuild the model they were trained as.
    dilation_cycle: tuple[int, ...] = (1,)
    # Slice level conditioning: 0 = none (the field's default, so older checkpoints rebuild as trained); else the
    # level in [0, 1] of a slice within its subject is cut into this many bins, plus a "no level" bin, and every
    # (label, level bin) pair gets its own gate biases and position tables: the 20 axial levels of a subject are 20
    # different anatomies (cerebellum to vertex), which one shared set of tables has to average.
    level_bins: int = 0
    # Slice stacks: also condition on the code grid of the slice below in the same subject (a subject is a stack of
    # consecutive axial slices, and the slice below fixes most of the next one). That grid is fully known before
    # the slice is sampled, so a small non-causal conv net reads it and adds a bias map to every layer's horizontal
    # gate: the spatial conditioning h -> V*s(h) of conditional PixelCNN (van den Oord et al. 2016, section 2.3).
    # Its tokens beside the K codes: BOTTOM (K) "no slice below: the first slice of a stack" and UNKNOWN (K+1)
    # "not given" (single slices; slice_dropout in training). False (the field's default) keeps older checkpoints.
    slice_context: bool = False
    # Slices per subject in the training codes (the most common count; fit_prior sets it, 0 = unknown): how tall a
    # sampled subject is by default, so its slices span the levels the prior learnt transitions between.
    stack_slices: int = 0
    # A 2-D position map per condition, of this rank: every layer's horizontal gate also gets ``map[cond, i, j] @
    # P_layer`` with ``map`` (conditions, h, w, rank) and ``P`` (rank -> L*2C) learned. The row + column tables above
    # can only add a separable pattern (a row term plus a column term), while AD differs from NC in a 2-D region
    # (the ventricles grow, the cortex thins): a rank-r map per condition can place it. 0 (the field's default, so
    # older checkpoints rebuild as trained): the row and column tables only.
    position_rank: int = 0

    def __post_init__(self) -> None:
        if self.num_embeddings < 2:
            raise ValueError(f"num_embeddings must be >= 2, got {self.num_embeddings}")
        for name in ("num_layers", "hidden_channels"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        object.__setattr__(self, "classes", tuple(str(c) for c in self.classes))  # JSON round-trips tuples as lists
        if len(self.classes) != self.num_classes or len(set(self.classes)) != len(self.classes):
            raise ValueError(f"classes must name each of the num_classes={self.num_classes} labels once, "
                             f"got {list(self.classes)}")
        if self.kernel_size < 3 or self.kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be odd and >= 3, got {self.kernel_size}")
        shape = tuple(int(s) for s in self.code_shape)
        object.__setattr__(self, "code_shape", shape)  # JSON round-trips tuples as lists
        if len(shape) != 2 or min(shape) <= 0:
            raise ValueError(f"code_shape must be two positive sizes (h, w), got {self.code_shape}")
        cycle = (self.dilation_cycle,) if isinstance(self.dilation_cycle, int) else tuple(self.dilation_cycle)
        if not cycle or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 1 for d in cycle):
            raise ValueError(f"dilation_cycle must be one or more ints >= 1, got {self.dilation_cycle!r}")
        object.__setattr__(self, "dilation_cycle", cycle)
        object.__setattr__(self, "conditional", bool(self.conditional))
        object.__setattr__(self, "slice_context", bool(self.slice_context))
        if self.stack_slices < 0 or self.stack_slices == 1:
            raise ValueError(f"stack_slices must be 0 (unknown) or >= 2, got {self.stack_slices}")
        if self.level_bins < 0 or self.level_bins == 1:
            raise ValueError(f"level_bins must be 0 (no levels) or >= 2, got {self.level_bins}")
        if self.position_rank < 0:
            raise ValueError(f"position_rank must be >= 0 (0 = row and column tables only), got {self.position_rank}")
        if self.level_bins and not self.conditional:
            raise ValueError("level_bins needs conditional=true (levels are conditions, as labels are)")

    @property
    def num_conditions(self) -> int:
        """Condition ids the prior knows: labels (with the null label), times level bins (with "no level")."""
        return (self.num_classes + 1) * (self.level_bins + 1 if self.level_bins else 1)

    @property
    def bottom_token(self) -> int:
        """Slice-context index of "no slice below": the first slice of a stack (``slice_context`` priors)."""
        return self.num_embeddings

    @property
    def unknown_token(self) -> int:
        """Slice-context index of "slice below not given": single slices (``slice_context`` priors)."""
        return self.num_embeddings + 1

    @property
    def null_label(self) -> int:
        return self.num_classes

    @property
    def context(self) -> int:
        """Kernel taps before the centre: ``kernel_size // 2`` (rows above, columns left), before dilation."""
        return self.kernel_size // 2

    @property
    def dilations(self) -> tuple[int, ...]:
        """Dilation of each layer. Layer 0 is never dilated: its mask-'A' kernel is the only path from the code just
        to the left, so dilating it would leave that neighbour unseen (a blind spot)."""
        return tuple(1 if i == 0 else self.dilation_cycle[i % len(self.dilation_cycle)] for i in range(self.num_layers))

    @property
    def cache_len(self) -> int:
        """Columns of history the horizontal sampling cache keeps for every layer: ``context x max dilation``."""
        return self.context * max(self.dilation_cycle)

    def hcache_shape(self, batch: int) -> tuple[int, int, int, int]:
        """Horizontal (per-position) cache: ``(B, L, cache_len, C)``."""
        return batch, self.num_layers, self.cache_len, self.hidden_channels

    def vcache_shape(self, batch: int) -> tuple[int, int, int, int]:
        """Vertical (per-row) cache: ``(B, w, R, C)``, layer ``i``'s last ``context x dilation_i`` input rows one
        after another (``R`` rows in all): what its kernel will still read, and no more (:class:`PixelCNNRowStep`).
        """
        return batch, self.code_shape[1], self.context * sum(self.dilations), self.hidden_channels

    def check_decoder(self, vqvae_config) -> None:
        """Refuse a VQ-VAE whose codes this prior does not model (codebook size, code grid): one rule, used by
        sampling and export alike."""
        from brainvq.errors import ModelFileError

        if self.num_embeddings != vqvae_config.num_embeddings:
            raise ModelFileError(f"prior has {self.num_embeddings} codes but the VQ-VAE codebook has "
                                 f"{vqvae_config.num_embeddings}")
        if tuple(self.code_shape) != tuple(vqvae_config.code_shape):
            raise ModelFileError(f"prior code grid {self.code_shape} != VQ-VAE code grid {vqvae_config.code_shape}")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["code_shape"] = list(self.code_shape)
        d["dilation_cycle"] = list(self.dilation_cycle)
        d["classes"] = list(self.classes)
        return d


def gate(x: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """Gated activation ``tanh(a) * sigmoid(b)`` over the two halves of ``dim``. (The step modules split at a Python
    int instead: traced, ``x.shape[dim] // 2`` is a Shape, Gather and Div chain that a graph run per code pays for.)"""
    half = x.shape[dim] // 2
    return torch.tanh(x.narrow(dim, 0, half)) * torch.sigmoid(x.narrow(dim, half, half))


def vertical_weight(conv: nn.Conv2d) -> torch.Tensor:
    """Vertical conv weight ``(2C,C,rows,taps)`` as a matmul weight ``(2C, taps*rows*C)`` over windows laid out
    ``[t*rows*C + r*C + c]``: the one layout the training forward and :class:`PixelCNNRowStep` both use."""
    return conv.weight.permute(0, 3, 2, 1).reshape(conv.weight.shape[0], -1)


def horizontal_weight(conv: nn.Conv2d) -> torch.Tensor:
    """Horizontal conv weight ``(2C,C,1,taps)`` as a matmul weight ``(2C, taps*C)`` over windows laid out
    ``[t*C + c]`` (leftmost column first), shared by the training forward and :class:`PixelCNNStep`."""
    return conv.weight[:, :, 0].permute(0, 2, 1).reshape(conv.weight.shape[0], -1)


def pointwise_weight(conv: nn.Conv2d) -> torch.Tensor:
    """A 1x1 conv weight ``(out,in,1,1)`` as a matmul weight ``(out,in)``."""
    return conv.weight[:, :, 0, 0]


def skip_weight(model: "GatedPixelCNN") -> tuple[torch.Tensor, torch.Tensor]:
    """Every layer's 1x1 skip conv as one matmul over the concatenated gates: weight ``(C,L*C)``, bias ``(C,)``."""
    return torch.cat([pointwise_weight(m) for m in model.h_skip], 1), sum(m.bias for m in model.h_skip)


class GatedPixelCNN(nn.Module):
    """Gated PixelCNN over ``(B,h,w)`` code grids; ``forward`` returns :class:`PixelCNNOutput`.

    ``labels`` are condition ids (:func:`brainvq.data.labels.condition_ids`): the label ids themselves when the prior
    has no level bins (0 NC, 1 AD, 2 none), else one id per (label, level bin) pair. The step modules and the
    exported graphs take the same ids, so every sampler computes them once, before sampling.
    """

    def __init__(self, config: PixelCNNConfig) -> None:
        super().__init__()
        self.config = config
        c, n, k, ctx = config.hidden_channels, config.num_layers, config.kernel_size, config.context
        self.embedding = nn.Embedding(config.num_embeddings, c)
        self.v_convs = nn.ModuleList(nn.Conv2d(c, 2 * c, (ctx + 1, k)) for _ in range(n))
        self.v_to_h = nn.ModuleList(nn.Conv2d(2 * c, 2 * c, 1) for _ in range(n))
        self.h_convs = nn.ModuleList(nn.Conv2d(c, 2 * c, (1, ctx if i == 0 else ctx + 1)) for i in range(n))
        self.h_res = nn.ModuleList(nn.Conv2d(c, c, 1) for _ in range(n - 1))  # the last layer feeds only the skips
        self.h_skip = nn.ModuleList(nn.Conv2d(c, c, 1) for _ in range(n))
        # One learned bias per condition (class, or class and level) and layer for the vertical (2C) and horizontal
        # (2C) gate pre-activations.
        self.label_embedding = nn.Embedding(config.num_conditions, n * 4 * c) if config.conditional else None
        # Where a code sits matters (background at the borders, ventricles in the middle) and the stacks only see
        # ~num_layers codes back, so every layer's horizontal gate also gets a learned row + column bias: a factorised
        # position embedding. Position is not data, so causality is untouched. When conditional there is one table
        # per label: AD differs from NC in *where* things are (larger ventricles, thinner cortex), which a
        # position-free class bias can hardly express.
        gh, gw = config.code_shape
        tables = config.num_conditions if config.conditional else 1
        self.row_bias = nn.Parameter(torch.zeros(tables, gh, n * 2 * c))
        self.col_bias = nn.Parameter(torch.zeros(tables, gw, n * 2 * c))
        self.head = nn.Sequential(nn.ReLU(), nn.Conv2d(c, c, 1), nn.ReLU(), nn.Conv2d(c, config.num_embeddings, 1))
        # Built last, so a prior without it draws the same initial weights as before it existed.
        self.context = SliceContextNet(config) if config.slice_context else None
        # After the context net, for the same reason. The map starts at zero (the prior starts as without it) and
        # the projection random, so the map's gradient is not zero from the first step.
        self.position_map, self.position_proj = None, None
        if config.position_rank:
            r = config.position_rank
            self.position_map = nn.Parameter(torch.zeros(tables, gh, gw, r))  # (tables,h,w,r)
            self.position_proj = nn.Linear(r, n * 2 * c, bias=False)  # weight (L*2C, r)

    def slice_bias(self, below: torch.Tensor | None, shape: tuple[int, int, int]) -> torch.Tensor | None:
        """Every layer's horizontal gate bias from the slice below, ``(B,h,w,L*2C)``; None without slice context.
        ``below`` ``(B,h,w)`` codes, or the tokens ``bottom_token`` / ``unknown_token``; None: not given."""
        if self.context is None:
            return None
        if below is None:
            below = torch.full(shape, self.config.unknown_token, dtype=torch.int64, device=self.row_bias.device)
        return self.context(below).bias

    def label_biases(self, labels: torch.Tensor | None, batch: int) -> torch.Tensor | None:
        """Per-layer gate biases ``(B, L, 4C)`` (vertical 2C then horizontal 2C), or None when unconditional."""
        if self.label_embedding is None:
            return None
        if labels is None:
            raise ValueError("a conditional PixelCNN needs labels (use the null label for unconditional samples)")
        return self.label_embedding(labels).view(batch, self.config.num_layers, -1)

    def position_tables(self, labels: torch.Tensor | None, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Row ``(B,h,L*2C)`` and column ``(B,w,L*2C)`` gate biases for each example's label."""
        if self.label_embedding is None:
            return self.row_bias.expand(batch, -1, -1), self.col_bias.expand(batch, -1, -1)
        return self.row_bias[labels], self.col_bias[labels]

    def position_maps(self, labels: torch.Tensor | None, batch: int) -> torch.Tensor | None:
        """Each example's 2-D position map ``(B,h,w,r)`` (``position_rank`` priors), or None."""
        if self.position_map is None:
            return None
        if self.label_embedding is None:
            return self.position_map.expand(batch, -1, -1, -1)
        return self.position_map[labels]

    def forward(self, codes: torch.Tensor, labels: torch.Tensor | None = None,
                below: torch.Tensor | None = None) -> PixelCNNOutput:
        # Channels-last throughout, every conv as one matmul over a window of shifted copies (im2col), and the position
        # tables broadcast per layer instead of materialised as a (B,h,w,L,2C) tensor: on 2 CPU cores that trains
        # ~1.3x the steps/s of Conv2d on NCHW tensors at batch 4 (benchmarks/prior_training.py).
        # The parameters stay Conv2d weights, read in the layouts the cached step modules below use.
        b, h, w = codes.shape
        c, ctx, n, k = self.config.hidden_channels, self.config.context, self.config.num_layers, self.config.kernel_size
        cond = self.label_biases(labels, b)  # (B,L,4C) | None
        x = self.embedding(codes)  # (B,h,w,C)
        rows, cols = self.position_tables(labels, b)  # (B,h,L*2C), (B,w,L*2C)
        stack = self.slice_bias(below, (b, h, w))  # (B,h,w,L*2C) | None
        pmap = self.position_maps(labels, b)  # (B,h,w,r) | None
        v, hs, gates = x, x, []
        for i, d in enumerate(self.config.dilations):
            v_conv, h_conv, layer = self.v_convs[i], self.h_convs[i], slice(i * 2 * c, (i + 1) * 2 * c)
            e = ctx * d  # reach of this layer's kernel
            vp = F.pad(v, (0, 0, e, e, e, 0))  # (B,h+e,w+2e,C): output row r sees input rows r-e..r, step d
            win = torch.cat([vp[:, r * d : r * d + h, t * d : t * d + w] for t in range(k) for r in range(ctx + 1)],
                            -1)  # (B,h,w,k(ctx+1)C)
            v_pre = F.linear(win, vertical_weight(v_conv), v_conv.bias)  # (B,h,w,2C)
            hp = F.pad(hs, (0, 0, e, 0))  # (B,h,w+e,C); layer 0's kernel is one tap narrower: mask 'A'
            taps = h_conv.weight.shape[-1]
            hwin = torch.cat([hp[:, :, t * d : t * d + w] for t in range(taps)], -1)  # (B,h,w,taps*C): j-e..j(-d)
            h_pre = F.linear(hwin, horizontal_weight(h_conv), h_conv.bias)  # (B,h,w,2C)
            v_h = F.linear(v_pre, pointwise_weight(self.v_to_h[i]), self.v_to_h[i].bias)  # (B,h,w,2C)
            # Shift down one row: (i, j) gets vertical context from rows < i only (no blind spot).
            h_pre = h_pre + F.pad(v_h, (0, 0, 0, 0, 1, 0))[:, :h] + rows[:, :h, None, layer] + cols[:, None, :w, layer]
            if cond is not None:
                v_pre = v_pre + cond[:, i, None, None, : 2 * c]
                h_pre = h_pre + cond[:, i, None, None, 2 * c :]
            if stack is not None:
                h_pre = h_pre + stack[..., layer]
            if pmap is not None:  # per layer: a (B,h,w,L*2C) tensor would cost more memory traffic than the convs
                h_pre = h_pre + F.linear(pmap, self.position_proj.weight[layer])  # (B,h,w,2C)
            g = gate(h_pre, -1)  # (B,h,w,C)
            gates.append(g)
            if i < n - 1:
                v = gate(v_pre, -1)
                res = F.linear(g, pointwise_weight(self.h_res[i]), self.h_res[i].bias)
                hs = res if i == 0 else hs + res  # no residual into layer 0's output: it would leak x[i, j]
        skip = F.linear(torch.cat(gates, -1), *skip_weight(self))  # (B,h,w,C)
        o1, o2 = self.head[1], self.head[3]
        out = F.linear(F.relu(F.linear(F.relu(skip), pointwise_weight(o1), o1.bias)), pointwise_weight(o2), o2.bias)
        return PixelCNNOutput(out.permute(0, 3, 1, 2))  # (B,K,h,w)

    def context_module(self) -> "SliceContextNet":
        """The slice-context net alone (``slice_context`` priors): run by the stack samplers on the slice below (on
        strips of it in the wavefront, :func:`brainvq.sampling.draw.wavefront_stacks`), its bias map added to the row
        module's output."""
        if self.context is None:
            raise ValueError("this prior has no slice context (trained with slice_context=false)")
        return self.context

    def row_module(self) -> "PixelCNNRowStep":
        """Per-row step module (snapshot of the current weights)."""
        return PixelCNNRowStep(self)

    def step_module(self) -> "PixelCNNStep":
        """Per-position step module (snapshot of the current weights)."""
        return PixelCNNStep(self)


class SliceContextOutput(NamedTuple):
    bias: torch.Tensor  # (B,h,w,L*2C) (or (B,R,w,L*2C): the rows asked for): every layer's gate bias, layer-major


class SliceContextNet(nn.Module):
    """The code grid of the slice below -> a horizontal gate bias per layer and position.

    ``forward(below (B,h,w) int64)`` -> :class:`SliceContextOutput`. Codes embed through their own table (plus the
    bottom and unknown tokens), then three 3x3 convs (a 7x7-code window of the slice below, ~28x28 pixels at
    downsample 4: a structure moves a few pixels between slices 2 mm apart) and a 1x1 projection to every layer's
    2C gate pre-activations. Non-causal: the slice below is known in full before this one is sampled.
    """

    def __init__(self, config: PixelCNNConfig) -> None:
        super().__init__()
        c, n = config.hidden_channels, config.num_layers
        self.embedding = nn.Embedding(config.num_embeddings + 2, c)
        self.convs = nn.ModuleList(nn.Conv2d(c, c, 3, padding=1) for _ in range(3))
        self.out = nn.Conv2d(c, n * 2 * c, 1)

    @property
    def radius(self) -> int:
        """Rows (and columns) of the slice below that one output position reads on each side: one per 3x3 conv. A
        strip of ``2 * radius + 1`` rows therefore gives its middle row exactly, which the wavefront stack sampler
        uses (:func:`brainvq.sampling.draw.wavefront_stacks`)."""
        return len(self.convs)

    def forward(self, below: torch.Tensor, rows: torch.Tensor | None = None) -> SliceContextOutput:
        """``below (B,h,w)``: any number of rows h (whole grids, or the strips of the wavefront sampler); ``rows
        (B,R)`` int64: only these rows of each grid's bias (None: all). The 1x1 projection to L*2C channels is most
        of the net's work and of its output, and the wavefront needs one row of each 7-row strip: it runs on those
        rows only."""
        x = self.embedding(below).permute(0, 3, 1, 2)  # (B,C,h,w)
        for conv in self.convs:
            x = F.relu(conv(x))
        x = x.permute(0, 2, 3, 1)  # (B,h,w,C)
        if rows is not None:
            c, w = x.shape[3], x.shape[2]
            x = torch.gather(x, 1, rows[:, :, None, None].expand(-1, -1, w, c))  # (B,R,w,C)
        return SliceContextOutput(F.linear(x, pointwise_weight(self.out), self.out.bias))  # (B,h|R,w,L*2C)


def _frozen(t: torch.Tensor) -> torch.Tensor:
    return t.detach().clone().contiguous()


def _padded_embedding(model: GatedPixelCNN) -> torch.Tensor:
    """Codebook embeddings plus a zero row at index K: "no code here" (row/column padding) as an ordinary index."""
    emb = model.embedding.weight  # (K,C)
    return _frozen(torch.cat([emb, emb.new_zeros(1, emb.shape[1])]))  # (K+1,C)


class PixelCNNRowStep(nn.Module):
    """Advance the vertical stack by one finished row; emit every layer's vertical + label term for the next row.

    ``forward(codes_row (B,w) int64, vcache (B,w,R,C), labels (B,) int64, row (1,) int64)``
    ``-> (vrow (w,B,L,2C), vcache (B,w,R,C))``; ``vcache`` holds each layer's last ``ctx x d`` input rows
    (:meth:`PixelCNNConfig.vcache_shape`), of which its kernel reads every d-th. The cache is the row step's memory
    traffic: it is rewritten on every call, so it keeps only what a kernel will read (65 rows at the default
    dilation cycle, not 12 layers x 16).

    ``vrow[j, :, l]`` is everything the horizontal gate pre-activation of layer ``l`` at ``(row, j)`` needs from
    rows above, from the label and from the position (plus the horizontal conv bias); ``row`` is the index of the
    row about to be sampled, ``codes_row`` the finished row above it. For row 0 the row above is zero padding in the
    full model: its vertical term is dropped and the returned cache discarded. Channels-last with the vertical conv
    as one im2col matmul: onnxruntime runs that ~2x faster than Conv on a one-row image plus an Einsum.
    """

    def __init__(self, model: GatedPixelCNN) -> None:
        super().__init__()
        cfg = model.config
        self.num_layers, self.ctx, self.c, self.k = cfg.num_layers, cfg.context, cfg.hidden_channels, cfg.kernel_size
        self.dilations, self.w = cfg.dilations, cfg.code_shape[1]
        self.register_buffer("emb", _padded_embedding(model))
        n, c = cfg.num_layers, cfg.hidden_channels
        for i, (vc, vh) in enumerate(zip(model.v_convs, model.v_to_h)):
            self.register_buffer(f"v_w{i}", _frozen(vertical_weight(vc).t()))  # (k*(ctx+1)*C, 2C)
            self.register_buffer(f"vh_w{i}", _frozen(pointwise_weight(vh).t()))  # (2C,2C)
        # Constant terms folded together, so a layer adds nothing but its matmuls: the vertical conv's bias reaches
        # the horizontal gate through v_to_h (v_b @ vh + vh_b, kept only below row 0) and the vertical gate directly
        # (with the condition's vertical bias); the horizontal conv's bias joins the column table.
        v_b = torch.cat([m.bias for m in model.v_convs])  # (L*2C,)
        self.register_buffer("vh_b", _frozen(torch.cat(
            [vc.bias @ pointwise_weight(vh).t() + vh.bias for vc, vh in zip(model.v_convs, model.v_to_h)])))  # (L*2C,)
        self.register_buffer("row_bias", _frozen(model.row_bias))  # (tables,h,L*2C)
        h_b = torch.cat([m.bias for m in model.h_convs])  # (L*2C,)
        self.register_buffer("col_bias", _frozen(model.col_bias + h_b))  # (tables,w,L*2C)
        # The 2-D position map (position_rank priors) joins the row's base term: one (B,w,r) x (r,L*2C) matmul a row.
        self.mapped = model.position_map is not None
        if self.mapped:
            self.register_buffer("position_map", _frozen(model.position_map))  # (tables,h,w,r)
            self.register_buffer("position_proj", _frozen(model.position_proj.weight.t()))  # (r,L*2C)
        self.conditional = model.label_embedding is not None
        if self.conditional:
            label = model.label_embedding.weight.view(-1, n, 2, 2 * c)  # (conditions, L, vertical|horizontal, 2C)
            self.register_buffer("label_v", _frozen(label[:, :, 0].reshape(-1, n * 2 * c) + v_b))  # (conditions,L*2C)
            self.register_buffer("label_h", _frozen(label[:, :, 1].reshape(-1, n * 2 * c)))  # (conditions,L*2C)
        else:
            self.register_buffer("label_v", _frozen(v_b[None]))  # (1,L*2C): every grid's
            self.register_buffer("label_h", torch.zeros(1, n * 2 * c))

    def forward(self, codes_row: torch.Tensor, vcache: torch.Tensor, labels: torch.Tensor, row: torch.Tensor):
        # Sizes are Python ints (the grid's width from the config), so the traced graph holds constants, not
        # Shape/Gather chains; only the batch is dynamic (-1). Activations keep a singleton row axis (B,w,1,.) so
        # that they join the cache without reshaping.
        n, ctx, c, w = self.num_layers, self.ctx, self.c, self.w
        keep = (row > 0).to(vcache.dtype).view(-1, 1, 1, 1)  # (1,1,1,1)
        # One position table per label when conditional (a single shared one otherwise).
        table = labels if self.conditional else torch.zeros_like(labels)  # (B,)
        base = (self.row_bias[table, row] + self.label_h[table]).unsqueeze(1) + self.col_bias[table]  # (B,w,L*2C)
        if self.mapped:
            base = base + self.position_map[table, row] @ self.position_proj  # (B,w,r) @ (r,L*2C)
        gate_b = self.label_v[table].view(-1, 1, 1, n * 2 * c)  # (B,1,1,L*2C)
        v = F.embedding(codes_row, self.emb).unsqueeze(2)  # (B,w,1,C)
        hparts, caches, start = [], [], 0
        for i, d in enumerate(self.dilations):
            e = ctx * d  # rows above this layer's kernel reaches
            old = vcache[:, :, start : start + e]  # (B,w,e,C): its input rows r-e..r-1
            start += e
            caches += [old[:, :, 1:], v]  # rows r-e+1..r: the next call's
            win = torch.cat([old[:, :, ::d], v], 2).reshape(-1, w, 1, (ctx + 1) * c)  # rows r-e, r-e+d, ..., r
            padded = F.pad(win, (0, 0, 0, 0, e, e))  # (B,w+2e,1,(ctx+1)C)
            cols = torch.cat([padded[:, t * d : t * d + w] for t in range(self.k)], 3)  # (B,w,1,k(ctx+1)C)
            v_pre = cols @ getattr(self, f"v_w{i}")  # (B,w,1,2C), its bias folded into vh_b and label_v
            hparts.append(v_pre @ getattr(self, f"vh_w{i}"))  # (B,w,1,2C)
            if i < n - 1:
                a = v_pre + gate_b[..., i * 2 * c : (i + 1) * 2 * c]
                v = torch.tanh(a[..., :c]) * torch.sigmoid(a[..., c:])  # (B,w,1,C): gate() with a static split
        h = (torch.cat(hparts, 3) + self.vh_b) * keep + base.unsqueeze(2)  # (B,w,1,L*2C)
        vrow = h.reshape(-1, w, n, 2 * c).transpose(0, 1).contiguous()  # (w,B,L,2C): vrow[j] is contiguous
        return vrow, torch.cat(caches, 2)  # (B,w,R,C)


class PixelCNNStep(nn.Module):
    """Advance the horizontal stack by one position and return the logits there.

    ``forward(prev_code (B,) int64, hcache (B,L,cache_len,C), vrow_j (B,L,2C)) -> (logits (B,K), hcache)``.

    ``prev_code`` is the code just drawn to the left (index K, "padding", at the start of a row, where ``hcache``
    must be zeros). Every conv is a matmul over a ``k//2+1``-wide window of cached activations, so one step costs
    about 1/(h·w) of a full forward pass.

    A step's compute is tiny (a few ``(B,C)x(C,2C)`` matmuls), so its time is the graph's node count: onnxruntime
    spends ~1 µs per node. Each horizontal conv is therefore split in two: the taps on cached columns, known before
    the step, for every layer at once (one Gather of the cached columns and one batched matmul, layers first, the
    vertical terms ``vrow_j`` added in the same pass), and the tap on the current column, which needs the layer below
    and stays in the loop as one Gemm. The cache shifts once for all layers. Same sums as the full model, in another
    order. (A block-diagonal matmul over all layers' taps was slower: its zeros cost more than the nodes it saved.)
    """

    def __init__(self, model: GatedPixelCNN) -> None:
        super().__init__()
        cfg = model.config
        n, ctx, c, cache = cfg.num_layers, cfg.context, cfg.hidden_channels, cfg.cache_len
        self.num_layers, self.c, self.cache_len = n, c, cache
        self.register_buffer("emb", _padded_embedding(model))
        # Cached columns each layer's kernel reads, as indices into hcache viewed as (B, L*cache_len, C): layer 0
        # (mask 'A', ctx taps ending at j-1) reads j-ctx..j-2 from the cache and j-1 (the code just drawn) as its
        # current input, so it gets one zero-weight tap to keep ctx taps a layer; layer i > 0 reads j-ctx*d..j-d from
        # the cache and j (the layer below's output).
        taps, past_w = [], torch.zeros(n, ctx * c, 2 * c)  # (L, ctx*C, 2C): layer i's cached taps -> its 2C
        for i, (m, d) in enumerate(zip(model.h_convs, cfg.dilations)):
            past = [cache - t * (1 if i == 0 else d) for t in range(ctx - (i == 0), 0, -1)]
            taps += [i * cache] * (ctx - len(past)) + [i * cache + p for p in past]  # the zero tap reads any column
            hw = horizontal_weight(m)  # (2C, taps*C), leftmost column first; the current column is the last tap
            past_w[i, (ctx - len(past)) * c :] = hw[:, : len(past) * c].t()
            self.register_buffer(f"cur_w{i}", _frozen(hw[:, len(past) * c :].t()))  # (C,2C)
        self.register_buffer("taps", torch.tensor(taps, dtype=torch.int64))  # (L*ctx,)
        self.register_buffer("past_w", _frozen(past_w))
        self.register_buffer(
            "res_w", _frozen(torch.stack([pointwise_weight(m) for m in model.h_res])) if model.h_res else torch.zeros(0)
        )  # (L-1,C,C)
        self.register_buffer(
            "res_b", _frozen(torch.stack([m.bias for m in model.h_res])) if model.h_res else torch.zeros(0)
        )  # (L-1,C)
        # All skip 1x1 convs as one matmul over the concatenated gates: fewer graph nodes per step.
        skip_w, skip_b = skip_weight(model)
        self.register_buffer("skip_w", _frozen(skip_w))  # (C,L*C)
        self.register_buffer("skip_b", _frozen(skip_b))  # (C,)
        self.register_buffer("o1_w", _frozen(pointwise_weight(model.head[1])))
        self.register_buffer("o1_b", _frozen(model.head[1].bias))
        self.register_buffer("o2_w", _frozen(pointwise_weight(model.head[3])))
        self.register_buffer("o2_b", _frozen(model.head[3].bias))

    def forward(self, prev_code: torch.Tensor, hcache: torch.Tensor, vrow_j: torch.Tensor):
        # Every size below is a Python int, so the traced graph holds constants, not Shape/Gather/Div chains.
        n, c, ctx = self.num_layers, self.c, len(self.taps) // self.num_layers
        x = F.embedding(prev_code, self.emb)  # (B,C)
        cached = hcache.reshape(-1, n * self.cache_len, c).index_select(1, self.taps)  # (B,L*ctx,C)
        cached = cached.reshape(-1, n, ctx * c).transpose(0, 1)  # (L,B,ctx*C)
        # + rows above, condition, position and conv bias (the row step's vrow)
        pres = (cached @ self.past_w + vrow_j.transpose(0, 1)).unbind(0)  # L x (B,2C)
        inputs, gates, hs = [x], [], x  # inputs[i]: layer i's current column, what its cache keeps
        for i in range(n):
            a = torch.addmm(pres[i], hs, getattr(self, f"cur_w{i}"))  # (B,2C): one Gemm
            g = torch.tanh(a[:, :c]) * torch.sigmoid(a[:, c:])  # gate() with a static split
            gates.append(g)
            if i < n - 1:
                res = F.linear(g, self.res_w[i], self.res_b[i])
                hs = res if i == 0 else hs + res  # no residual into layer 0's output (see GatedPixelCNN.forward)
                inputs.append(hs)
        skip = F.linear(torch.cat(gates, 1), self.skip_w, self.skip_b)  # (B,C)
        out = F.linear(F.relu(F.linear(F.relu(skip), self.o1_w, self.o1_b)), self.o2_w, self.o2_b)  # (B,K)
        new = torch.cat(inputs, 1).reshape(-1, n, 1, c)  # (B,L,1,C)
        return out, torch.cat([hcache[:, :, 1:], new], 2)  # (B,K), (B,L,cache_len,C)
