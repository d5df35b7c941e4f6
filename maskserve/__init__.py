"""maskserve: Segment Anything as a service.

`maskserve.Predictor` is the in-process drop-in for `segment_anything.SamPredictor`;
`maskserve.Client` is the same interface against a running decoder service.
"""

__version__ = "0.1.0"

__all__ = ["Predictor", "Client", "__version__"]


def __getattr__(name):  # imported lazily: `import maskserve` stays cheap for the CLI
    if name == "Predictor":
        from maskserve.engines.predictor import Predictor

        return Predictor
    if name == "Client":
        from maskserve.service.client import Client

        return Client
    raise AttributeError(name)
