"""maskserve: Segment Anything as a service.

`maskserve.Predictor` is the in-process drop-in for `segment_anything.SamPredictor`;
`maskserve.Client` is the same interface against a running decoder service (`maskserve.AsyncClient`, its
asyncio twin; `maskserve.RemoteLogits`, the low-res logits they leave on the service; `maskserve.errors`, the
typed errors they raise, `maskserve.MaskserveError` the base of them all): the `maskserve.client` package;
`maskserve.AutomaticMaskGenerator` is the drop-in for `SamAutomaticMaskGenerator`, on either;
`maskserve.VideoTracker` tracks objects through video with `SAM2VideoPredictor`'s verbs, on either;
`maskserve.ConceptSegmenter` finds every instance of a phrase (SAM 3) with `Sam3Processor`'s verbs, on either.
"""

__version__ = "0.1.0"

__all__ = ["Predictor", "Client", "AsyncClient", "RemoteLogits", "errors", "MaskserveError",
           "AutomaticMaskGenerator", "VideoTracker", "ConceptSegmenter", "__version__"]

_CLIENT = ("Client", "AsyncClient", "RemoteLogits", "errors", "MaskserveError")


# What running a model in this process needs (maskserve_tiny: the default model, packages/maskserve-tiny).
SERVER_PACKAGES = ("onnxruntime", "cv2", "PIL", "maskserve_tiny")


def needs_server(what: str) -> ImportError:
    """The one-line error for an in-process model on a client-only install."""
    import importlib.util

    missing = [m for m in SERVER_PACKAGES if importlib.util.find_spec(m) is None]
    return ImportError(f"{what} runs the model in this process, which needs the server extra "
                       f"(missing: {', '.join(missing)}): pip install 'maskserve[server]'; or call a running "
                       "service with maskserve.Client")


def __getattr__(name):  # imported lazily: `import maskserve` stays cheap for the CLI
    if name == "Predictor":
        from maskserve.engines.predictor import Predictor

        return Predictor
    if name in _CLIENT:
        from maskserve import client

        return getattr(client, name)
    if name == "VideoTracker":
        from maskserve.video import VideoTracker

        return VideoTracker
    if name == "ConceptSegmenter":
        from maskserve.concepts import ConceptSegmenter

        return ConceptSegmenter
    if name == "AutomaticMaskGenerator":
        from maskserve.engines.automatic import AutomaticMaskGenerator

        return AutomaticMaskGenerator
    raise AttributeError(name)
