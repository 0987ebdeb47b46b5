# Two commands a newcomer needs: `make run` and `make test`. Both create .venv when it is missing.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.reml-installed
CONSTRAINTS := constraints.txt
PIP := $(BIN)/python -m pip --disable-pip-version-check -q
PYTEST_ARGS ?=

.PHONY: install run test docs clean

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

test: install
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# The documentation site (MkDocs, Material, API pages from the docstrings) into site/; any warning
# (a broken link, a missing page, an unresolvable reference) fails the build.
docs: install
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .hypothesis site
