from .core import CoordFormer, CoordFormerOutput, coordinate_features, sinusoidal_table

__all__ = ["CoordFormer", "CoordFormerOutput", "coordinate_features", "sinusoidal_table"]
