"""Image files: finding them, decoding them in full as 8-bit RGB whatever their mode, and screening out the ones that
cannot be read."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from transferlab.errors import ConfigError

# torchvision's IMG_EXTENSIONS (jpg jpeg png ppm bmp pgm tif tiff webp) plus gif, which PIL reads
# and real data sets contain (hymenoptera's train/ants/imageNotFound.gif).
IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp", ".gif")
BAD_FILE_POLICIES = ("skip", "error")
BAD_FILES = "bad_files.txt"  # where skipped files are listed, in the run folder


def load_rgb(item, draft: bool = False) -> Image.Image:
    """An item of a :class:`Split` as an 8-bit RGB PIL image (see :func:`to_rgb`), decoded in full.

    ``draft`` lets a JPEG decode at a reduced scale: every byte is still read, which is what screening needs."""
    if isinstance(item, np.ndarray):
        return Image.fromarray(item)  # HxWx3 uint8 -> RGB
    with Image.open(item) as raw:
        if draft:
            raw.draft("RGB", (max(1, raw.width // 8), max(1, raw.height // 8)))
        raw.load()  # a truncated or corrupt file fails here, not in the middle of training
        return to_rgb(raw)


def to_rgb(image: Image.Image) -> Image.Image:
    """Any mode a camera or scanner writes, as 8-bit RGB: the EXIF orientation applied; 16- and 32-bit integer
    grayscale scaled from the 16-bit range (PIL's own conversion clips it, which turns most such images white);
    palette, CMYK, YCbCr and 1-bit converted; transparency composited over white."""
    image = ImageOps.exif_transpose(image)
    if image.mode.startswith("I"):  # I;16, I;16B, I;16L (16-bit) and I (32-bit, how PIL reads some 16-bit files)
        values = np.asarray(image).astype(np.float64)
        gray = np.clip(np.round(values / 257.0), 0, 255).astype(np.uint8)
        return Image.fromarray(gray, mode="L").convert("RGB")
    if image.mode == "F":
        raise ValueError("a 32-bit floating-point image (mode F) has no fixed range; save it as 8- or 16-bit")
    if image.mode in ("P", "PA", "LA", "La", "RGBa") or "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode == "RGBA":
        white = Image.new("RGB", image.size, (255, 255, 255))
        white.paste(image, mask=image.getchannel("A"))
        return white
    return image.convert("RGB")


def image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMG_EXTENSIONS)


def find_unreadable(paths: Sequence[Path]) -> dict[Path, str]:
    """Files that cannot be read in full as RGB images, with the reason: each is decoded (JPEGs at a reduced
    scale), so a truncated file is found here and not in the middle of training."""
    bad = {}
    for path in paths:
        try:
            load_rgb(path, draft=True)
        except Exception as error:  # PIL raises many types (UnidentifiedImageError, OSError, SyntaxError, ...)
            bad[path] = f"{type(error).__name__}: {error}"
    return bad


def screen(
    paths: Sequence[Path],
    policy: str,
    option: str,
    root: str,
    subject: str,
    listing_dir: Path | None,
    listing_name: str = BAD_FILES,
) -> tuple[set[Path], str | None]:
    """The unreadable files among ``paths`` (found under ``root``) and a line saying they were skipped (None when
    there are none).

    Under ``policy`` ``error`` the first one is a ConfigError starting with ``subject``; under ``skip`` they are
    listed in ``listing_dir``/``listing_name``. ``option`` is the policy's option name, for the fixes.
    """
    bad = find_unreadable(paths)
    if not bad:
        return set(), None
    first, reason = next(iter(bad.items()))
    if policy == "error":
        raise ConfigError(f"{subject}: {first} is not a readable image ({reason}); delete it or set {option}=skip")
    where = ""
    if listing_dir is not None:
        listing = Path(listing_dir) / listing_name
        from transferlab.run_folder import write_atomic

        write_atomic(listing, "".join(f"{path}\n" for path in bad))
        where = f", listed in {listing}"
    return set(bad), (
        f"{option}=skip: skipped {len(bad)} unreadable image file(s) under {root}{where} "
        f"(set {option}=error to stop instead)"
    )
