"""maskserve: Segment Anything as a service.

`maskserve.Predictor` is the in-process drop-in for `segment_anything.SamPredictor`;
`maskserve.Client` is the same interface against a running decoder service;
`maskserve.AutomaticMaskGenerator` is the drop-in for `SamAutomaticMaskGenerator`, on either.
"""

__version__ = "0.1.0"

__all__ = ["Predictor", "Client", "AutomaticMaskGenerator", "__version__"]


def __getattr__(name):  # imported lazily: `import maskserve` stays cheap for the CLI
    if name == "Predictor":
        from maskserve.engines.predictor import Predictor

        return Predictor
    if name == "Client":
        from maskserve.service.client import Client

        return Client
    if name == "AutomaticMaskGenerator":
        from maskserve.engines.automatic import AutomaticMaskGenerator

        return AutomaticMaskGenerator
    raise AttributeError(name)
