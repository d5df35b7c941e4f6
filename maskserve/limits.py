"""The service's default limits, declared once: the settings (`MASKSERVE_MAX_*`) default to them, the engines
and the CLI take them as defaults, and the client sizes its channel by them. Client-only installs have this
module too, which is why it sits at the package root."""

MAX_POINTS = 64  # points in one prompt
MAX_PROMPTS = 256  # prompts in one SegmentPrompt
MAX_PHRASES = 16  # phrases in one SegmentConcept (each is a detector run: ~1 s on a GPU-less node, full size)
MAX_IMAGE_PIXELS = 40_000_000  # 40 MP: a larger image is refused, not resized, so the caller knows
MAX_MESSAGE_MB = 64  # gRPC message size, both ways
IMAGE_ID = r"[0-9a-f]{32}"  # what EncodeImage returns: the client tells an image_id from a file name by it
