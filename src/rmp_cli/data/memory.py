"""Small datasets held in memory as uint8 tensors, augmented and normalized with batched torch ops."""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

Augment = Callable[[torch.Tensor], torch.Tensor]


class RandomShiftFlip:
    """torchvision's RandomCrop(size, padding=pad) (+ RandomHorizontalFlip) on a (B, C, H, W) batch.

    Cropping the zero-padded image at a random offset is a shift by up to `pad` pixels; zero is the
    raw black pixel, as with torchvision, because this runs before normalization.

    Drawing the offsets (`draw`, always from the CPU generator) is separate from moving the pixels
    (`apply`, on whatever device the batch is on): a batch held on the GPU gets exactly the crops
    and flips the same batch would get on the host, so where the data lives never changes a run.
    """

    def __init__(self, pad: int, flip: bool) -> None:
        self.pad = pad
        self.flip = flip

    def draw(self, batch: int) -> torch.Tensor:
        """(3, batch) int64 on the CPU: row offset, column offset, flip (0/1) of each image."""
        dy = dx = torch.zeros(batch, dtype=torch.long)
        flips = torch.zeros(batch, dtype=torch.long)
        if self.pad > 0:
            dy = torch.randint(0, 2 * self.pad + 1, (batch,))
            dx = torch.randint(0, 2 * self.pad + 1, (batch,))
        if self.flip:
            flips = (torch.rand(batch) < 0.5).long()
        return torch.stack((dy, dx, flips))

    def apply(self, images: torch.Tensor, draws: torch.Tensor) -> torch.Tensor:
        """Shift and flip `images` as `draws` (from `draw`, on the images' device) say."""
        b, c, h, w = images.shape
        device = images.device
        if self.pad > 0:
            p = self.pad
            padded = F.pad(images, (p, p, p, p))
            rows = (draws[0, :, None] + torch.arange(h, device=device))[:, None, :, None]
            cols = (draws[1, :, None] + torch.arange(w, device=device))[:, None, None, :]
            batch = torch.arange(b, device=device)[:, None, None, None]
            channel = torch.arange(c, device=device)[None, :, None, None]
            images = padded[batch, channel, rows, cols]
        if self.flip:
            flipped = draws[2].bool()
            images = torch.where(flipped[:, None, None, None], images.flip(-1), images)
        return images

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        return self.apply(images, self.draw(images.shape[0]).to(images.device))

    def __repr__(self) -> str:
        return f"RandomShiftFlip(pad={self.pad}, flip={self.flip})"


class InMemoryImages(Dataset):
    """(image, label) pairs from a (N, C, H, W) integer tensor; yields normalized float CxHxW.

    `__getitems__` lets DataLoader fetch a whole batch with one indexing op and one augmentation call
    instead of N Python-level transforms.
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        *,
        max_value: float,
        mean: Sequence[float],
        std: Sequence[float],
        augment: Augment | None = None,
    ) -> None:
        if images.ndim != 4 or labels.shape != (images.shape[0],):
            raise ValueError(
                f"need (N,C,H,W) images and (N,) labels, got {tuple(images.shape)} "
                f"and {tuple(labels.shape)}"
            )
        channels = images.shape[1]
        mean_t = torch.tensor(mean, dtype=torch.float32).view(channels, 1, 1)
        std_t = torch.tensor(std, dtype=torch.float32).view(channels, 1, 1)
        self.images = images
        self.labels = labels.long()
        self.augment = augment
        # (x / max_value - mean) / std folded into one multiply and one subtract.
        self._scale = 1.0 / (max_value * std_t)
        self._shift = mean_t / std_t

    def __len__(self) -> int:
        return self.images.shape[0]

    @property
    def normalization(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(scale, shift), (C, 1, 1) each: normalized = raw * scale - shift."""
        return self._scale, self._shift

    def __getitems__(self, indices: Sequence[int]) -> list[tuple[torch.Tensor, int]]:
        index = torch.as_tensor(indices, dtype=torch.long)
        batch = self.images[index]
        if self.augment is not None:
            batch = self.augment(batch)
        batch = batch.float().mul_(self._scale).sub_(self._shift)
        return list(zip(batch.unbind(0), self.labels[index].tolist(), strict=True))

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} images")
        return self.__getitems__([index])[0]

    def with_augment(self, augment: Augment | None) -> InMemoryImages:
        """Same images (shared, not copied) with another augmentation."""
        view = copy.copy(self)
        view.augment = augment
        return view
