"""The ``onnx`` engine: ``fused`` exported to ONNX (once per checkpoint and torch version, cached) and run by
onnxruntime on the CPU. About as fast as ``fast`` on the benchmark machine, at the cost of an export on first use
and two more packages, so it is opt-in."""

from __future__ import annotations

import logging

import torch
from torch import nn

from ..errors import DeLightSAMError
from .fused import fused_model

logger = logging.getLogger(__name__)


class OnnxRunner:
    """``fused`` exported to ONNX and run by onnxruntime; called like the model, returns DeLightSAMOutput
    (without the image embedding). The export is cached per checkpoint under the checkpoint cache folder."""

    def __init__(self, model: nn.Module) -> None:
        try:
            import onnxruntime
        except ImportError as error:
            raise DeLightSAMError(
                "the 'onnx' engine needs: pip install onnx onnxruntime (or use engine 'fast')"
            ) from error
        path = self._export(model)
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()
        self.session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    @staticmethod
    def _export(model: nn.Module):
        import hashlib

        from ..atomic import atomic_file
        from ..checkpoint import cache_dir

        digest = hashlib.sha256(torch.__version__.encode())
        for key, value in model.state_dict().items():
            digest.update(key.encode())
            digest.update(value.detach().cpu().contiguous().numpy().tobytes())
        config = getattr(model, "config", None)
        size = config.image_size if config is not None else 1024
        folder = cache_dir() / "onnx"
        path = folder / f"delightsam-{digest.hexdigest()[:16]}-{size}.onnx"
        if path.is_file():
            return path
        folder.mkdir(parents=True, exist_ok=True)
        with atomic_file(path) as temporary:
            sample = torch.zeros(1, 3, size, size)
            torch.onnx.export(
                _Outputs(fused_model(model).cpu().float()),
                (sample,),
                str(temporary),
                input_names=["images"],
                output_names=["modality_logits", "patch_logits"],
                dynamo=False,
                opset_version=17,
                dynamic_axes={name: {0: "batch"} for name in ("images", "modality_logits", "patch_logits")},
            )
        logger.info("exported %s", path)
        return path

    def __call__(self, images: torch.Tensor):
        from ..modeling import DeLightSAMOutput

        modality_logits, patch_logits = self.session.run(None, {"images": images.detach().cpu().float().numpy()})
        return DeLightSAMOutput(torch.from_numpy(modality_logits), torch.from_numpy(patch_logits), None)


class _Outputs(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor):
        output = self.model(images)
        return output.modality_logits, output.patch_logits
