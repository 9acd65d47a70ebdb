"""img2img's resize modes: how an init image of another shape is fitted to the output size, as A1111 does it
(``modules.images.resize_image`` with no img2img upscaler: Lanczos)."""

from __future__ import annotations

from PIL import Image

# A1111's labels, in the order of its ``resize_mode`` index (the API's integer)
RESIZE_MODES = ("Just resize", "Crop and resize", "Resize and fill", "Just resize (latent upscale)")
LATENT_UPSCALE = 3  # the image is encoded at its own size and the latents are resized (bilinear)


def fit_image(mode: int, image: Image.Image, width: int, height: int) -> Image.Image:
    """``image`` at ``width`` x ``height``: 0 stretches it, 1 scales it to cover and crops the overflow (centred),
    2 scales it to fit and fills the bands by stretching its edge rows or columns. Mode 3 resizes latents instead,
    so the image is returned as it is."""
    if mode == LATENT_UPSCALE:
        return image
    if mode == 0:
        return image.resize((width, height), Image.Resampling.LANCZOS)
    ratio, src_ratio = width / height, image.width / image.height
    cover = mode == 1
    if (ratio > src_ratio) == cover:
        src_w, src_h = width, image.height * width // image.width
    else:
        src_w, src_h = image.width * height // image.height, height
    resized = image.resize((src_w, src_h), Image.Resampling.LANCZOS)
    result = Image.new("RGB", (width, height))
    result.paste(resized, box=(width // 2 - src_w // 2, height // 2 - src_h // 2))
    if mode == 2 and ratio < src_ratio:  # bands above and below: the first and last rows, stretched
        fill = height // 2 - src_h // 2
        if fill > 0:
            result.paste(resized.resize((width, fill), box=(0, 0, width, 0)), box=(0, 0))
            result.paste(resized.resize((width, fill), box=(0, resized.height, width, resized.height)),
                         box=(0, fill + src_h))
    elif mode == 2 and ratio > src_ratio:  # bands left and right: the first and last columns, stretched
        fill = width // 2 - src_w // 2
        if fill > 0:
            result.paste(resized.resize((fill, height), box=(0, 0, 0, height)), box=(0, 0))
            result.paste(resized.resize((fill, height), box=(resized.width, 0, resized.width, height)),
                         box=(fill + src_w, 0))
    return result
