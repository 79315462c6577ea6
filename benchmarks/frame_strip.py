"""A policy's episode as one image: evenly spaced frames of an evaluation GIF, side by side.

    python spirl_sac.py --evaluate <dir>/spirl_sac.pt --eval-episodes 4 --capture-video
    python benchmarks/frame_strip.py --gif <dir>/spirl_sac_evaluate_<k>.gif --count 9 --out docs/<name>.png

`spirl_sac.py --evaluate --capture-video` writes the first evaluation episode, next to the checkpoint, as a GIF with one frame per skill (the reset
frame, then one after every H env steps). This picks --count of them, evenly spaced from the first to the last,
scales each to --height pixels and pastes them left to right; with --skill-horizon each frame is labelled with
its env step (frame i = i x H env steps).
"""

import os
from dataclasses import dataclass
from typing import Optional

import numpy as np
import tyro


@dataclass
class Args:
    gif: str
    """an evaluation GIF of spirl_sac.py --capture-video"""
    out: str
    """the PNG to write"""
    count: int = 9
    """frames in the strip, evenly spaced from the first to the last frame of the GIF"""
    height: int = 200
    """pixels per frame (width scaled to keep the aspect ratio)"""
    skill_horizon: Optional[int] = None
    """label each frame with its env step, frame index x skill_horizon (None: no labels)"""


def read_frames(path):
    """Every frame of a GIF as an RGB PIL image."""
    from PIL import Image, ImageSequence

    if not os.path.isfile(path):
        raise SystemExit(f"no GIF at {path}: make one with spirl_sac.py --evaluate <checkpoint> --capture-video")
    with Image.open(path) as gif:
        return [frame.convert("RGB") for frame in ImageSequence.Iterator(gif)]


def strip(frames, count, height, skill_horizon=None):
    """(image, the frame indices used): count evenly spaced frames pasted side by side."""
    from PIL import Image, ImageDraw

    indices = sorted(set(np.linspace(0, len(frames) - 1, min(count, len(frames))).round().astype(int).tolist()))
    width = round(frames[0].width * height / frames[0].height)
    image = Image.new("RGB", (width * len(indices), height), "white")
    for slot, index in enumerate(indices):
        image.paste(frames[index].resize((width, height)), (slot * width, 0))
        if skill_horizon is not None:
            ImageDraw.Draw(image).text((slot * width + 4, 4), f"{index * skill_horizon} steps", fill="black")
    return image, indices


if __name__ == "__main__":
    args = tyro.cli(Args)
    if args.count < 1 or args.height < 1:
        raise SystemExit("--count and --height must be positive")
    frames = read_frames(args.gif)
    image, indices = strip(frames, args.count, args.height, args.skill_horizon)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    image.save(args.out)
    print(f"{args.out}: frames {indices} of {len(frames)}, {image.width}x{image.height} px")
