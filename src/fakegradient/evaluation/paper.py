"""The paper's Table 1 (Feng et al., MM 2021) beside our numbers: its values live in the method registry."""

from ..methods import METHODS, PAPER_COLUMNS

COLUMNS = dict(zip(  # our model name → the paper's column
    ("resnet34", "resnet18", "densenet121", "vgg19", "vgg11", "mobilenet_v2", "googlenet"), PAPER_COLUMNS))


def paper_value(metric: str, method: str, model: str) -> float | None:
    """The paper's number for our ``model`` name (``name`` or ``name:weights``), if it has one."""
    column = COLUMNS.get(model.split(":")[0])
    entry = METHODS.get(method)
    return entry.paper.get(metric, {}).get(column) if column and entry else None
