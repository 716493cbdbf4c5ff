"""The reference decoder, its spec, loaders and tokenizer.

Only the torch-free ``ModelSpec`` is imported here, so the simulator can use it without torch;
import the model and loaders from their modules (``edge.model.llama``, ``edge.model.load``).
"""

from edge.model.spec import HF_ARCHITECTURES, ModelSpec, RopeScaling

__all__ = ["HF_ARCHITECTURES", "ModelSpec", "RopeScaling"]
