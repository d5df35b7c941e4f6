"""MobileSAM: SAM with TinyViT, a distilled image encoder, in place of its ViT. Everything served — image
preparation, prompts, the decoder's graphs, mask choice, the generator — is SAM's; what differs is the encoder
network, so its export module and PyTorch encoder, and its manifest and model version's key (the general ones)."""

from __future__ import annotations

from . import Family
from .sam import Sam


class MobileSam(Sam):
    name = "mobile_sam"
    export_module = "maskserve.build.mobile_sam_export"
    # SAM's own predate families; these name the family
    manifest_fields, model_version = Family.manifest_fields, Family.model_version

    @staticmethod
    def network():
        """An untrained `mobile_sam` `vit_t` (`Sam` with TinyViT), from the authors' own code."""
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # timm's deprecations and registry overwrites, on import
            from mobile_sam.build_sam import build_sam_vit_t

            return build_sam_vit_t()

    def torch_encoder(self, model_dir, state, part, dtype, attention, device):
        """mobile_sam's own TinyViT (the torch extra installs it): its attention biases are gathered into a
        buffer by `eval()`, so the weights load first."""
        net = self.network().image_encoder
        net.load_state_dict(state, strict=True)
        net = net.eval().to(device=device, dtype=dtype)
        size = net.img_size
        return net, (size, int(state["neck.0.weight"].shape[0]), size // 16)


FAMILY = MobileSam()
