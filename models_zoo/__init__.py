"""edgehybrid's model zoo: readable, export-friendly hybrid attention + convolution models.

Names and state-dict keys are timm's, so published timm checkpoints load with strict matching. Each family
lives in its own file and registers its variants on import; importing this package registers them all.
"""

# registration order is listing order: hybrids first, then the baselines they are weighed against
from models_zoo import mobilevit  # noqa: F401  isort: skip
from models_zoo import mobilevit_v2  # noqa: F401  isort: skip
from models_zoo import efficientformer  # noqa: F401  isort: skip
from models_zoo import efficientformer_v2  # noqa: F401  isort: skip
from models_zoo import efficientvit  # noqa: F401  isort: skip
from models_zoo import botnet  # noqa: F401  isort: skip
from models_zoo import cvt  # noqa: F401  isort: skip
from models_zoo import conformer  # noqa: F401  isort: skip
from models_zoo import baselines  # noqa: F401  isort: skip
from models_zoo.registry import Checkpoint, ModelSpec, Preprocessing, Published, registered
from models_zoo.zoo import LoadedModel, RandomWeightsWarning, get_spec, list_models, load_model, parse_ref

__all__ = [
    "Checkpoint",
    "LoadedModel",
    "ModelSpec",
    "Preprocessing",
    "Published",
    "RandomWeightsWarning",
    "get_spec",
    "list_models",
    "load_model",
    "parse_ref",
    "registered",
]
