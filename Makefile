# Two commands a newcomer needs: `make run` and `make test`. Both create .venv when it is missing.
# `make lint` (part of `make test`) checks style and types; `make format` lays the code out as lint expects.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.reml-installed
CONSTRAINTS := constraints.txt
PIP := $(BIN)/python -m pip --disable-pip-version-check -q
PYTEST_ARGS ?=

.PHONY: install run test lint format test-dispatch docs clean

install: $(STAMP)

# The stamp makes a second `make install` a no-op until pyproject.toml, the pins or the
# learn2learn recipe change. torch/torchvision come first: pip takes them from this machine's disk.
$(STAMP): pyproject.toml $(CONSTRAINTS) tools/install_learn2learn.sh
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP) install -c $(CONSTRAINTS) pip setuptools wheel
	$(PIP) install -c $(CONSTRAINTS) torch torchvision
	tools/install_learn2learn.sh $(BIN)/python $(CONSTRAINTS)
	$(PIP) install -c $(CONSTRAINTS) --no-build-isolation -e '.[dev,ray,docs]'
	@touch $(STAMP)

run: install
	$(BIN)/reml-run --plugin sine

# The whole suite on this machine's own CPU dispatch, then the numerics-sensitive tests again under others.
# Every pytest exit status counts, 5 (no test collected) too: nothing here swallows one.
test: install lint
	$(BIN)/python -m pytest $(PYTEST_ARGS)
	$(MAKE) --no-print-directory test-dispatch

# ruff (pyflakes, pycodestyle, import order, bugbear, pyupgrade; every import inside a function says
# why it is lazy), the layout ruff format gives, and mypy on reml_core and the built-in plugins (config
# in pyproject.toml). mypy sees plugins/ under its import name, reml_plugins, through a link in build/
# (the editable install's import hook is invisible to it), so imports between plugins are checked too.
lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	@mkdir -p build/mypy && ln -sfn ../../plugins build/mypy/reml_plugins
	$(BIN)/mypy

# Lay the code out as `make lint` expects, and apply ruff's safe fixes (import order).
format: install
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

# The tests marked `numerics` (their results depend on floating-point rounding; docs/reliability.md,
# "Determinism") under two CPU dispatches other than this machine's. ATEN_CPU_CAPABILITY picks torch's
# kernels (avx512, avx2, default = no vector code). MKL picks its own by vendor: on a CPU that is not
# Intel's it ignores MKL_ENABLE_INSTRUCTIONS, so the preloaded shim (tools/mkl_intel_cpu.c) makes it
# take Intel's paths: the first leg is an Intel Xeon with AVX-512 (issue 20's machine) running torch's
# AVX2 kernels, the second an Intel AVX2 CPU running torch's scalar kernels.
MKL_INTEL := $(VENV)/lib/mkl_intel_cpu.so
NUMERICS := $(BIN)/python -m pytest -m numerics -q -p no:cacheprovider

test-dispatch: install $(MKL_INTEL)
	LD_PRELOAD=$(abspath $(MKL_INTEL)) ATEN_CPU_CAPABILITY=avx2 $(NUMERICS)
	LD_PRELOAD=$(abspath $(MKL_INTEL)) ATEN_CPU_CAPABILITY=default MKL_ENABLE_INSTRUCTIONS=AVX2 $(NUMERICS)

$(MKL_INTEL): tools/mkl_intel_cpu.c $(STAMP)
	$(CC) -shared -fPIC -O2 -o $@ $<

# The documentation site (MkDocs, Material, API pages from the docstrings) into site/; any warning
# (a broken link, a missing page, an unresolvable reference) fails the build.
docs: install
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .hypothesis site
