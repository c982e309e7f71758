# AnomaLens developer commands. `make test` is what CI runs (.ci/run); `make demo` runs the main job.
PY ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
XVFB := $(shell command -v xvfb-run >/dev/null 2>&1 && echo "xvfb-run -a -s '-screen 0 1280x1024x24'")
PYTEST_ARGS ?=
BENCH_ARGS ?=

.PHONY: install test lint demo bench slow clean installer docs-shots

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

# torch goes in first, pinned by constraints.txt to the local CPU build, so nothing pulls a CUDA build.
$(STAMP): $(BIN)/python pyproject.toml setup.py constraints.txt
	$(BIN)/python -m pip install -q -c constraints.txt torch
	$(BIN)/python -m pip install -q -c constraints.txt -e ".[viewer,dev]"
	touch $(STAMP)

install: $(STAMP)

lint: install
	$(BIN)/ruff check .
	$(BIN)/lint-imports

test: lint
	$(XVFB) $(BIN)/python -m pytest -m "not slow" $(PYTEST_ARGS)

slow: install
	$(XVFB) $(BIN)/python -m pytest -m "slow" $(PYTEST_ARGS)

# With a display the viewer opens on the result; without one the same run goes headless and, when an
# X server can be started (xvfb-run), a screenshot of the viewer lands in demo-output/ as well.
demo: install
	@if [ -n "$$DISPLAY" ]; then $(BIN)/anomalens-viewer --demo; \
	elif [ -n "$(XVFB)" ]; then $(XVFB) $(BIN)/anomalens-viewer --demo --screenshot demo-output/viewer.png; \
	else $(BIN)/anomalens demo; fi
	@echo "demo outputs are in $(CURDIR)/demo-output"

bench: install
	$(XVFB) $(BIN)/python bench/run_all.py $(BENCH_ARGS)

# Desktop bundle (installer/README.md): a separate build environment with a normal (non-editable) install of
# this tree, so the bundle holds the package as a wheel lays it out, then PyInstaller → dist/anomalens/.
# Run from build/ so that nothing of the source tree is on the path beside the installed package.
IVENV := build/installer-venv
IBIN := $(IVENV)/bin
ISTAMP := $(IVENV)/.installed

$(IBIN)/python:
	$(PY) -m venv $(IVENV)
	$(IBIN)/python -m pip install -q --upgrade pip

$(ISTAMP): $(IBIN)/python pyproject.toml setup.py constraints.txt
	$(IBIN)/python -m pip install -q -c constraints.txt torch
	$(IBIN)/python -m pip install -q -c constraints.txt ".[viewer,installer]"
	touch $(ISTAMP)

installer: $(ISTAMP)
	rm -rf build/lib build/bdist.*
	$(IBIN)/python -m pip install -q --no-deps --force-reinstall .
	cd build && start=$$(date +%s) && nice -n 10 ../$(IBIN)/pyinstaller --noconfirm --clean --log-level WARN \
		--distpath ../dist --workpath pyinstaller ../installer/anomalens.spec \
		&& echo "pyinstaller: $$(( $$(date +%s) - start )) s"
	du -sh dist/anomalens
	@echo "bundle in $(CURDIR)/dist/anomalens; check it with installer/smoke_test"

clean:
	rm -rf build dist *.egg-info .pytest_cache .ruff_cache demo-output

# Screenshots and the shortcut table of docs/user-guide.md (docs/shots.py; needs xvfb-run; ~2 min)
docs-shots: install
	xvfb-run -a -s '-screen 0 1920x1080x24' $(BIN)/python docs/shots.py --out docs/images
	xvfb-run -a -s '-screen 0 1366x768x24' $(BIN)/python docs/shots.py --out docs/images --main-only
