# `make demo` runs the whole TinySaver pipeline on the embedded synthetic default;
# `make test` runs the test suite. Both create .venv and install what they need first.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: venv demo demo-quick test bench clean

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

test: venv
	$(PY) -m pytest -q tests

bench: venv
	$(PY) bench/routing_accuracy.py && $(PY) bench/routing_overhead.py && $(PY) bench/cost_growth.py

clean:
	rm -rf output
