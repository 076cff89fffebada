"""The official JiT training loader's throughput, for scripts/bench-loader.sh: torchvision's
ImageFolder + DataLoader with the official code's transform (ADM's centre crop, a random
horizontal flip, PILToTensor), `workers` worker processes. Prints one Markdown row.

    python scripts/loader_torchvision.py DIR IMAGE_SIZE BATCH WORKERS BATCHES
"""
import sys
import time

import numpy as np
import torch
from PIL import Image
from torchvision import datasets, transforms


def center_crop_arr(pil_image, image_size):
    """ADM's centre crop, as the official JiT code applies it: halve with a box filter while the
    short side is at least twice the target, resize the short side to it (bicubic), crop the
    centre."""
    while min(*pil_image.size) >= 2 * image_size:
        pil_image = pil_image.resize(tuple(x // 2 for x in pil_image.size), resample=Image.BOX)
    scale = image_size / min(*pil_image.size)
    pil_image = pil_image.resize(tuple(round(x * scale) for x in pil_image.size), resample=Image.BICUBIC)
    arr = np.array(pil_image)
    top = (arr.shape[0] - image_size) // 2
    left = (arr.shape[1] - image_size) // 2
    return Image.fromarray(arr[top : top + image_size, left : left + image_size])


def main():
    root, size, batch, workers, batches = sys.argv[1], *map(int, sys.argv[2:6])
    transform = transforms.Compose(
        [
            transforms.Lambda(lambda img: center_crop_arr(img, size)),
            transforms.RandomHorizontalFlip(),
            transforms.PILToTensor(),
        ]
    )
    data = datasets.ImageFolder(root, transform=transform)
    loader = torch.utils.data.DataLoader(
        data, batch_size=batch, shuffle=True, num_workers=workers, pin_memory=False, drop_last=True,
        persistent_workers=workers > 0,
    )
    it = iter(loader)
    next(it)  # warm-up: workers started, first batch
    t0 = time.perf_counter()
    for _ in range(batches):
        try:
            next(it)
        except StopIteration:
            it = iter(loader)
            next(it)
    secs = time.perf_counter() - t0
    print(f"| torchvision ImageFolder + DataLoader (official transform) | {len(data)} | 3×{size}×{size} | {batch} | {workers} | {batches} | {batches * batch / secs:.1f} |")


if __name__ == "__main__":
    main()
