"""The paper's Table 1 (Feng et al., MM 2021), to print beside our numbers."""

COLUMNS = {  # our model name → the paper's column
    "resnet34": "ResNet34", "resnet18": "ResNet18", "densenet121": "DenseNet121", "vgg19": "VGG19",
    "vgg11": "VGG11", "mobilenet_v2": "MobileNet", "googlenet": "GoogLeNet",
}

TABLE1 = {  # metric → method → paper column → value
    "fake_output_pct": {
        "random-weight": dict(zip(COLUMNS.values(), [1, 1, 0, 0, 0, 0, 6])),
        "fake-gradient": dict(zip(COLUMNS.values(), [100] * 7)),
    },
    "original_functionality_pct": {
        "random-weight": dict(zip(COLUMNS.values(), [100] * 7)),
        "fake-gradient": dict(zip(COLUMNS.values(), [100] * 7)),
    },
    "defense_success_pct": {
        "random-weight": dict(zip(COLUMNS.values(), [1.2, 11.4, 0, 0, 0, 0, 22.5])),
        "fake-gradient": dict(zip(COLUMNS.values(), [90.5, 92.1, 94.9, 79.8, 82.9, 87.1, 84.8])),
    },
    "rho_mean": {
        "random-weight": dict(zip(COLUMNS.values(), [0.0019, 0.0016, 0.0017, 0.0017, 0.0020, 0.0012, 0.0017])),
        "fake-gradient": dict(zip(COLUMNS.values(), [0.0010, 0.0009, 0.0008, 0.0015, 0.0015, 0.0012, 0.0015])),
        "original": dict(zip(COLUMNS.values(), [0.0018, 0.0016, 0.0017, 0.0017, 0.0020, 0.0012, 0.0018])),
    },
}


def paper_value(metric: str, method: str, model: str) -> float | None:
    """The paper's number for our ``model`` name (``name`` or ``name:weights``), if it has one."""
    column = COLUMNS.get(model.split(":")[0])
    return TABLE1.get(metric, {}).get(method, {}).get(column) if column else None
