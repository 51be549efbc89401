#!/usr/bin/env python
# usage: RETINA_GANS_DATA=<folder> [ROWS=4] python docs/figure_small_data.py OUT.png "TITLE::GRID.png" ...
# The README's small-data figures: ROWS x 8 real train images, then the first ROWS rows of each run's final
# fixed-noise grid (samples/epoch_NNNN.png), one panel above the other at 3x, nearest neighbour.
import os
import sys
import numpy as np
from PIL import Image, ImageDraw

rows = int(os.environ.get("ROWS", "4"))
out, runs = sys.argv[1], [a.split("::", 1) for a in sys.argv[2:]]
real = np.array([np.array(Image.fromarray(im).convert("L"))  # ITU-R 601-2 luma, as the data module does
                 for im in np.load(os.path.join(os.environ.get("RETINA_GANS_DATA", "data"), "retinamnist.npz"))["train_images"][:8 * rows]])
pad = 2
def tile(images):  # (8 * rows, 28, 28) -> rows x 8 columns with 2-px black gaps, as make_grid does
    canvas = np.zeros((rows * 30 + pad, 8 * 30 + pad), np.uint8)
    for i, im in enumerate(images):
        r, c = divmod(i, 8)
        canvas[pad + 30 * r: pad + 30 * r + 28, pad + 30 * c: pad + 30 * c + 28] = im
    return canvas
def grid_rows(path):  # the first rows of an 8x8 make_grid PNG
    g = np.array(Image.open(path).convert("L"))
    return g[: rows * 30 + pad]
panels = [("real (train)", tile(real))] + [(title, grid_rows(path)) for title, path in runs]
scale, head = 3, 22
w = panels[0][1].shape[1] * scale
h = sum(p.shape[0] * scale + head for _, p in panels)
fig = Image.new("L", (w, h), 255)
draw, y = ImageDraw.Draw(fig), 0
for title, p in panels:  # one panel per row, its title above it
    draw.text((4, y + 5), title, fill=0)
    fig.paste(Image.fromarray(p).resize((p.shape[1] * scale, p.shape[0] * scale), Image.NEAREST), (0, y + head))
    y += p.shape[0] * scale + head
fig.save(out)
