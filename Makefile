# The two commands: `make demo` and `make test`. Both set everything up first.
PYTHON ?= python3.11
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.deploykit-installed

EXAMPLE  := build/example
DEMO_OUT := build/demo
DEMO_TARGETS := -t tflite-fp32 -t tflite-fp16 -t tflite-dynamic -t tflite-int8 -t tflite-int8-io -t tflite-int16x8 \
	-t onnx-auto -t tflm-int8

.PHONY: install demo test test-fast bench clean

install: $(STAMP)

# Re-install when the dependency list changes; the stamp makes repeated runs instant.
$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

$(EXAMPLE)/digits.keras: examples/digits/build_model.py $(STAMP)
	$(PY) examples/digits/build_model.py --out $(EXAMPLE)

demo: install $(EXAMPLE)/digits.keras
	$(VENV)/bin/deploy convert $(EXAMPLE)/digits.keras $(DEMO_TARGETS) \
		--data $(EXAMPLE)/digits.npz --out $(DEMO_OUT) --force
	@echo ""
	@echo "Report: $(DEMO_OUT)/report.md  (HTML: $(DEMO_OUT)/report.html, manifest: $(DEMO_OUT)/manifest.json)"

test: install
	$(PY) -m pytest -q --durations=10

test-fast: install
	$(PY) -m pytest -q -m "not slow"

bench: install
	$(PY) benchmarks/run_all.py

clean:
	rm -rf build .pytest_cache
