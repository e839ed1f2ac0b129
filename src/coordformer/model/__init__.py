from .core import (
    CoordFormer,
    CoordFormerOutput,
    coordinate_features,
    position_table,
    sinusoidal_table,
)

__all__ = [
    "CoordFormer",
    "CoordFormerOutput",
    "coordinate_features",
    "position_table",
    "sinusoidal_table",
]
