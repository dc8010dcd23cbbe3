# The two commands: `make demo` and `make test`. Both set everything up first.
PYTHON ?= python3.11
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.deploykit-installed

EXAMPLE  := build/example
DEMO_OUT := build/demo
DEMO_TARGETS := -t tflite-fp32 -t tflite-fp16 -t tflite-dynamic -t tflite-int8 -t tflite-int8-io -t tflite-int16x8 \
	-t onnx-auto -t tflm-int8 -t tfjs-fp32 -t tfjs-uint8

# The TF.js runtime (Node): pinned by its package-lock.json, installed beside the runner script.
TFJS_DIR   := src/deploykit/runtime_bench/tfjs
TFJS_STAMP := $(TFJS_DIR)/node_modules/.deploykit-installed
CHROMIUM   := /usr/bin/chromium

.PHONY: install demo test test-fast bench clean browser

install: $(STAMP) $(TFJS_STAMP) browser

# Re-install when the dependency list changes; the stamp makes repeated runs instant.
# Retries and resumed downloads: TensorFlow's wheel is ~570 MB and a connection may drop mid-way.
$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet --retries 10 --resume-retries 10 -e '.[dev]'
	@touch $(STAMP)

# npm ci: exactly the lockfile's versions (@tensorflow/tfjs 4.22.0 + wasm backend), no native code.
# Without npm the build goes on; TF.js targets then fail with a message naming this step.
$(TFJS_STAMP): $(TFJS_DIR)/package-lock.json $(TFJS_DIR)/package.json
	@if command -v npm >/dev/null 2>&1; then \
		npm ci --prefix $(TFJS_DIR) --no-audit --no-fund --loglevel=error && touch $(TFJS_STAMP); \
	else \
		echo "warning: npm not found; the TF.js runtime is not installed (install Node.js >= 18 with npm, then make install)"; \
	fi

# Headless Chromium for `deploy bench --browser` and its test: installed when we can (root + apt-get);
# otherwise the browser test skips and says why.
browser:
	@if [ -x $(CHROMIUM) ]; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		echo "installing chromium (apt-get) for the TF.js browser benchmark"; \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null \
		|| { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null; } \
		|| echo "warning: could not install chromium; browser benchmarks will be skipped"; \
	else \
		echo "note: $(CHROMIUM) missing (needs root + apt-get: apt-get install chromium); browser benchmarks will be skipped"; \
	fi

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
