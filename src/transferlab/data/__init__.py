"""Image classification data: the digits and image-folder sources, transforms and the LightningDataModule."""

from transferlab.data.datamodule import ClassificationDataModule

__all__ = ["ClassificationDataModule"]
