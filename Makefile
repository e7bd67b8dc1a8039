# Two entry points: `make demo` (classify an example clip with the shipped model) and `make test`.
# Both use the virtual environment .venv. `make demo` installs only the base package (ONNX Runtime, no PyTorch);
# `make test` installs everything, torch pinned through constraints.txt and installed first.
PY ?= python3
VENV ?= .venv
PIP = $(VENV)/bin/pip
STAMP = $(VENV)/.emovox-installed
BASE_STAMP = $(VENV)/.emovox-base-installed

.PHONY: venv demo test lint bench clean browser

# The web page's end-to-end test drives Debian's headless Chromium (root installs it via apt).
browser:
	@command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1 || \
	  { [ "$$(id -u)" = 0 ] && (apt-get update -qq && apt-get install -y -qq chromium chromium-driver >/dev/null) \
	    || echo "warning: chromium/chromedriver missing and cannot be installed: the browser test will fail"; }

$(STAMP): pyproject.toml constraints.txt
	$(PY) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -c constraints.txt torch==2.13.0
	$(PIP) install -q -c constraints.txt -e ".[all,test,bench]"
	touch $(STAMP) $(BASE_STAMP)

# the main job needs only the base install (ONNX Runtime, no PyTorch)
$(BASE_STAMP): pyproject.toml constraints.txt
	$(PY) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -c constraints.txt -e .
	touch $(BASE_STAMP)

venv: $(STAMP)

demo: $(BASE_STAMP)
	$(VENV)/bin/emovox classify examples/ravdess_03-01-05-02-01-01-12.flac --format json

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks tools

test: $(STAMP) browser
	$(VENV)/bin/ruff check src tests benchmarks tools
	$(VENV)/bin/python -m pytest -q tests

clean:
	rm -rf $(VENV) build dist src/*.egg-info .pytest_cache
