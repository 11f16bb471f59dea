"""MONAI transformer networks (UNETR, SwinUNETR) built the MONAI 1.6 way, with arguments checked up front.

Both are volume-input networks: they take the ``(B, 2, s, s, s)`` lift of the two views (wrap them in
:class:`~xray3d.models.adapters.VolumeAsInput`) and return ``(B, 1, s, s, s)`` logits. The defaults are the
reference settings of spec §3.2. MONAI reports a bad size or width only deep in the first forward pass (or
not at all); these factories raise a :class:`ValueError` that states the rule when the model is built.

Based on: Hatamizadeh et al., "UNETR: Transformers for 3D Medical Image Segmentation", WACV 2022
(arXiv 2103.10504); Hatamizadeh et al., "Swin UNETR: Swin Transformers for Semantic Segmentation of Brain
Tumors in MRI Images", BrainLes 2021 (arXiv 2201.01266).
"""

from __future__ import annotations

from collections.abc import Sequence

from monai.networks.nets import UNETR, SwinUNETR

__all__ = ["UNETR_PATCH_SIZE", "swin_unetr", "unetr"]

#: UNETR's patch size: fixed in MONAI (16 voxels per token side).
UNETR_PATCH_SIZE = 16


def _sizes(img_size: int | Sequence[int], name: str) -> tuple[int, int, int]:
    """``img_size`` as three positive ints (an int means a cube)."""
    sizes = (img_size,) * 3 if isinstance(img_size, int) else tuple(img_size)
    if len(sizes) != 3 or not all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in sizes):
        raise ValueError(f"{name}: img_size must be a positive int or 3 positive ints, got {img_size!r}")
    return sizes  # type: ignore[return-value]


def _check_rate(value: float, name: str, model: str) -> None:
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{model}: {name} must be in [0, 1], got {value}")


def unetr(
    img_size: int | Sequence[int],
    in_channels: int = 2,
    out_channels: int = 1,
    feature_size: int = 16,
    hidden_size: int = 768,
    mlp_dim: int = 3072,
    num_heads: int = 12,
    proj_type: str = "conv",
    norm_name: str = "instance",
    conv_block: bool = True,
    res_block: bool = True,
    dropout_rate: float = 0.1,
    qkv_bias: bool = False,
) -> UNETR:
    """MONAI ``UNETR`` (3D) with the reference settings of spec §3.2 (MONAI 1.1 called proj_type pos_embed).

    The ViT cuts the input into 16³ patches and learns one position embedding per patch, so the model only
    accepts inputs of exactly ``img_size``; at s=128 it has 8³ tokens, at s=64 4³.

    Args:
        img_size: input side ``s`` (or 3 sides); each must be divisible by the patch size 16.
        in_channels: input channels (2: the AP and LAT lifts).
        out_channels: output channels (1 logit).
        feature_size: channels of the first decoder stage.
        hidden_size: ViT embedding width; divisible by ``num_heads``.
        mlp_dim: ViT MLP width.
        num_heads: attention heads.
        proj_type: patch embedding, ``"conv"`` or ``"perceptron"``.
        norm_name: decoder normalisation.
        conv_block: use conv blocks in the skip paths.
        res_block: use residual blocks in the decoder.
        dropout_rate: ViT dropout (0.1 in every benchmark script).
        qkv_bias: bias in the attention projections.

    Raises:
        ValueError: if a size is not divisible by 16, ``hidden_size`` is not divisible by ``num_heads``, or
            ``dropout_rate`` is outside [0, 1].
    """
    sizes = _sizes(img_size, "UNETR")
    if any(s % UNETR_PATCH_SIZE for s in sizes):
        raise ValueError(
            f"UNETR: img_size must be divisible by the patch size {UNETR_PATCH_SIZE} (e.g. 32, 64, 128), got "
            f"{img_size!r}; the model then only accepts inputs of exactly that size"
        )
    if hidden_size % num_heads:
        raise ValueError(
            f"UNETR: hidden_size must be divisible by num_heads, got hidden_size={hidden_size}, "
            f"num_heads={num_heads}"
        )
    _check_rate(dropout_rate, "dropout_rate", "UNETR")
    return UNETR(
        in_channels=in_channels,
        out_channels=out_channels,
        img_size=sizes,
        feature_size=feature_size,
        hidden_size=hidden_size,
        mlp_dim=mlp_dim,
        num_heads=num_heads,
        proj_type=proj_type,
        norm_name=norm_name,
        conv_block=conv_block,
        res_block=res_block,
        dropout_rate=dropout_rate,
        spatial_dims=3,
        qkv_bias=qkv_bias,
    )


def swin_unetr(
    img_size: int | Sequence[int],
    in_channels: int = 2,
    out_channels: int = 1,
    feature_size: int = 48,
    depths: Sequence[int] = (2, 2, 2, 2),
    num_heads: Sequence[int] = (3, 6, 12, 24),
    norm_name: str = "instance",
    drop_rate: float = 0.1,
    attn_drop_rate: float = 0.0,
    dropout_path_rate: float = 0.0,
    normalize: bool = True,
    use_checkpoint: bool = False,
    downsample: str = "merging",
    patch_size: int = 2,
    window_size: int = 7,
) -> SwinUNETR:
    """MONAI ``SwinUNETR`` (3D) with the reference settings (spec §3.2).

    MONAI 1.6 dropped SwinUNETR's ``img_size`` argument (the network works on any grid whose sides are
    multiples of ``patch_size**5``); ``img_size`` is kept here so the grid is checked when the model is
    built, not in the first forward pass. With instance norm the smallest working grid is 64: at 32 the
    deepest feature map is a single voxel.

    Args:
        img_size: grid side ``s`` (or 3 sides); each must be a multiple of ``patch_size**5`` (32), and at
            least 64 with instance norm.
        in_channels: input channels (2: the AP and LAT lifts).
        out_channels: output channels (1 logit).
        feature_size: embedding width of the first stage; a multiple of 12 (48 in the reference).
        depths: Swin blocks per stage (4 stages).
        num_heads: attention heads per stage; stage ``i`` width ``feature_size * 2**i`` must divide evenly.
        norm_name: decoder normalisation.
        drop_rate: dropout (0.1 in every benchmark script).
        attn_drop_rate: attention dropout.
        dropout_path_rate: stochastic depth rate.
        normalize: normalise the hidden states passed to the decoder.
        use_checkpoint: gradient checkpointing (less memory, about 30% slower; off in the reference).
        downsample: patch-merging variant.
        patch_size: patch embedding size (MONAI default 2).
        window_size: attention window (MONAI default 7).

    Raises:
        ValueError: if a size is not a multiple of ``patch_size**5`` (or is below ``2 * patch_size**5`` with
            instance norm), ``feature_size`` is not a multiple of 12, a stage width is not divisible by its
            head count, or a rate is outside [0, 1].
    """
    sizes = _sizes(img_size, "SwinUNETR")
    multiple = patch_size**5
    if any(s % multiple for s in sizes):
        raise ValueError(
            f"SwinUNETR: the grid size must be a multiple of {multiple} (patch_size**5 = {patch_size}**5: "
            f"the patch embedding and 4 patch-merging stages each halve it), got img_size={img_size!r}"
        )
    if str(norm_name).lower() == "instance" and min(sizes) < 2 * multiple:
        raise ValueError(
            f"SwinUNETR: with norm_name='instance' the grid size must be at least {2 * multiple} (the "
            f"deepest feature map is img_size / {multiple} and instance norm needs more than one voxel), "
            f"got img_size={img_size!r}"
        )
    if feature_size <= 0 or feature_size % 12:
        raise ValueError(f"SwinUNETR: feature_size must be a positive multiple of 12, got {feature_size}")
    if len(depths) != 4 or len(num_heads) != 4:
        raise ValueError(
            f"SwinUNETR: depths and num_heads need 4 entries (one per stage), got {list(depths)} and "
            f"{list(num_heads)}"
        )
    for i, heads in enumerate(num_heads):
        width = feature_size * 2**i
        if heads <= 0 or width % heads:
            raise ValueError(
                f"SwinUNETR: stage {i} width feature_size * 2**{i} = {width} must be divisible by "
                f"num_heads[{i}] = {heads}"
            )
    for name, value in (
        ("drop_rate", drop_rate),
        ("attn_drop_rate", attn_drop_rate),
        ("dropout_path_rate", dropout_path_rate),
    ):
        _check_rate(value, name, "SwinUNETR")
    return SwinUNETR(
        in_channels=in_channels,
        out_channels=out_channels,
        patch_size=patch_size,
        depths=tuple(depths),
        num_heads=tuple(num_heads),
        window_size=window_size,
        feature_size=feature_size,
        norm_name=norm_name,
        drop_rate=drop_rate,
        attn_drop_rate=attn_drop_rate,
        dropout_path_rate=dropout_path_rate,
        normalize=normalize,
        use_checkpoint=use_checkpoint,
        spatial_dims=3,
        downsample=downsample,
    )
