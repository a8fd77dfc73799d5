"""MLP encoder (backbone) for tabular inputs, e.g. the diabetes regression table."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from contrastmix._validation import check_positive, check_tensor

__all__ = ["MLPEncoder"]


class MLPEncoder(nn.Module):
    """Stack of ``Linear -> [BatchNorm1d] -> ReLU`` blocks.

    Every block, including the last one of width ``out_dim``, ends with the non-linearity, so
    the output plays the role of a CNN's pooled (post-ReLU) backbone features: put a projector
    on top for contrastive training and a linear model on top for probing.

    Args:
        in_features: Number of input features ``F``.
        hidden: Widths of the hidden blocks (may be empty).
        out_dim: Width of the output block (the backbone feature size).
        batchnorm: Use ``BatchNorm1d`` after every ``Linear`` (bias dropped then).
        dropout: Dropout probability after every hidden block.

    Attributes:
        output_dim: ``out_dim``.

    Shapes:
        ``forward(x [B, F]) -> [B, out_dim]``.
    """

    def __init__(
        self,
        in_features: int,
        hidden: Sequence[int] = (256, 256),
        out_dim: int = 128,
        batchnorm: bool = True,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        check_positive("in_features", in_features)
        check_positive("out_dim", out_dim)
        for i, h in enumerate(hidden):
            check_positive(f"hidden[{i}]", h)
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"`dropout` must be in [0, 1), got {dropout}")
        widths = [in_features, *hidden, out_dim]
        layers: list[nn.Module] = []
        for i, (a, b) in enumerate(zip(widths[:-1], widths[1:], strict=True)):
            layers.append(nn.Linear(a, b, bias=not batchnorm))
            if batchnorm:
                layers.append(nn.BatchNorm1d(b))
            layers.append(nn.ReLU(inplace=True))
            if dropout > 0 and i < len(widths) - 2:
                layers.append(nn.Dropout(dropout))
        self.net = nn.Sequential(*layers)
        self.in_features = in_features
        self.output_dim = out_dim

    def forward(self, x: Tensor) -> Tensor:
        check_tensor("x", x, ndim=2, dim=self.in_features, finite=False)
        return self.net(x)
