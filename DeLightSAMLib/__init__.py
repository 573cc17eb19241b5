"""DeLightSAMLib: De-LightSAM (modality-decoupled lightweight SAM) for medical image segmentation, in PyTorch.

Pure library: torch, numpy, SimpleITK; never slicer, vtk or qt. Submodules are imported on demand so that
``import DeLightSAMLib`` stays cheap (Slicer imports it while building its UI).
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
