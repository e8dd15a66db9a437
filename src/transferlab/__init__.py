"""transferlab: config-driven transfer learning on timm backbones with Lightning and Hydra.

Importing the package is cheap: submodules import torch, timm and Lightning only when used.
"""

__version__ = "0.1.0"
