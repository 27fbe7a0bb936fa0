"""Tiling: the tiles that cover a scene's overlap, generated on demand, and the part of each tile it answers for."""

from dataclasses import dataclass
from typing import Iterator

from rasterio.windows import Window

from ..defaults import MIN_TILE_SIZE
from ..imagery import SceneInputError


@dataclass(frozen=True)
class Tile:
    """One tile of the grid.

    Args:
        index (`int`): position in row-major order.
        window (`Window`): the pixels captioned, on the first date's grid.
        owned (`Window`): the part of `window` this tile answers for in the mask mosaic and polygons: where tiles
            overlap, each pixel belongs to the tile whose centre is nearer.
    """

    index: int
    window: Window
    owned: Window


def _axis_starts(start: int, length: int, tile: int, stride: int) -> list[int]:
    if length <= tile:
        return [start]
    starts = list(range(start, start + length - tile + 1, stride))
    if starts[-1] + tile < start + length:
        starts.append(start + length - tile)  # the last tile moves back to end on the edge instead of padding
    return starts


def _ownership_bounds(starts: list[int], tile: int) -> list[int]:
    ends = [start + tile for start in starts]
    return [starts[0]] + [(start + end) // 2 for start, end in zip(starts[1:], ends[:-1])] + [ends[-1]]


class TileGrid:
    """Tiles of `tile_size` pixels covering `window`, `overlap` pixels shared between neighbours.

    Tiles are generated on demand (memory does not grow with the scene). A window narrower than a tile gives one
    tile of the window's size along that side.

    Args:
        window (`Window`): the area to tile (integer offsets and sizes).
        tile_size (`int`): tile side in pixels.
        overlap (`int`): pixels shared by neighbouring tiles, `0 <= overlap < tile_size`.
    """

    def __init__(self, window: Window, tile_size: int, overlap: int = 0):
        if tile_size < 1:
            raise SceneInputError(f"--tile-size must be a positive number of pixels, got {tile_size}")
        if not 0 <= overlap < tile_size:
            raise SceneInputError(
                f"--overlap must be at least 0 and less than --tile-size ({tile_size}), got {overlap}"
            )
        stride = tile_size - overlap
        self.tile_height = min(tile_size, int(window.height))
        self.tile_width = min(tile_size, int(window.width))
        self.row_starts = _axis_starts(int(window.row_off), int(window.height), tile_size, stride)
        self.col_starts = _axis_starts(int(window.col_off), int(window.width), tile_size, stride)
        self.row_bounds = _ownership_bounds(self.row_starts, self.tile_height)
        self.col_bounds = _ownership_bounds(self.col_starts, self.tile_width)

    def __len__(self) -> int:
        return len(self.row_starts) * len(self.col_starts)

    def __iter__(self) -> Iterator[Tile]:
        for row_index, row in enumerate(self.row_starts):
            for col_index, col in enumerate(self.col_starts):
                row_lo, row_hi = self.row_bounds[row_index : row_index + 2]
                col_lo, col_hi = self.col_bounds[col_index : col_index + 2]
                yield Tile(
                    index=row_index * len(self.col_starts) + col_index,
                    window=Window(col, row, self.tile_width, self.tile_height),
                    owned=Window(col_lo, row_lo, col_hi - col_lo, row_hi - row_lo),
                )


def check_tile_size(tile_size: int) -> None:
    """Refuse tiles too small to caption (`MIN_TILE_SIZE`)."""
    if tile_size < MIN_TILE_SIZE:
        raise SceneInputError(
            f"--tile-size must be at least {MIN_TILE_SIZE} pixels, got {tile_size}: the model sees every tile resized "
            "to its input size, and smaller tiles show it nothing to describe (and a scene millions of them)"
        )


__all__ = ["MIN_TILE_SIZE", "Tile", "TileGrid", "check_tile_size"]
