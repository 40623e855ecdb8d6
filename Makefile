# `make demo` runs the whole TinySaver pipeline on the embedded synthetic default;
# `make test` checks the code with ruff (`make lint`, ruff.toml), then runs the test suite.
# Each creates .venv and installs what it needs first.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
LINT_STAMP := $(VENV)/.lint-installed

.PHONY: venv demo demo-quick demo-bccd demo-bccd-quick test lint format bench clean

venv: $(STAMP)

$(STAMP): requirements.txt setup.py tools/install_detectron2.sh
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade "pip>=23,<25"
	$(PY) -m pip install -q -r requirements.txt
	bash tools/install_detectron2.sh $(PY)
	$(PY) -m pip install -q --no-deps --no-build-isolation -e .
	touch $(STAMP)

demo: venv
	$(PY) tools/demo.py --output-dir output/demo

demo-quick: venv
	$(PY) tools/demo.py --quick --output-dir output/demo_quick

# The same pipeline on real microscope images (BCCD, from ../shared/data or $TINYSAVER_SHARED_DATA).
demo-bccd: venv
	$(PY) tools/demo.py --track bccd --output-dir output/demo_bccd

demo-bccd-quick: venv
	$(PY) tools/demo.py --track bccd --quick --output-dir output/demo_bccd_quick

test: venv lint
	$(PY) -m pytest -q tests

# The linter alone: no torch or detectron2 needed.
$(LINT_STAMP): requirements-dev.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -r requirements-dev.txt
	touch $(LINT_STAMP)

lint: $(LINT_STAMP)
	$(PY) -m ruff format --check .
	$(PY) -m ruff check .

format: $(LINT_STAMP)
	$(PY) -m ruff format .
	$(PY) -m ruff check --fix .

# The benchmarks use the models `make demo` trained.
DEMO_WEIGHTS := MODEL.WEIGHTS output/demo/tinysaver/model_final.pth \
	MODEL.TINYSAVER.SAVER.WEIGHTS output/demo/saver/model_final.pth \
	MODEL.TINYSAVER.BASE.WEIGHTS output/demo/base/model_final.pth

bench: venv
	$(PY) bench/routing_accuracy.py $(DEMO_WEIGHTS) MODEL.TINYSAVER.CACHE.DIR output/demo/cache
	$(PY) bench/routing_overhead.py $(DEMO_WEIGHTS) MODEL.TINYSAVER.CALIBRATION_FILE output/demo/calibration/calibration.json
	$(PY) bench/cost_growth.py

clean:
	rm -rf output
