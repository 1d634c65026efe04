# Two commands on a fresh machine: `make demo` and `make test`. Each creates .venv if needed.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check -q

.PHONY: demo test lint bench bench-scaling install clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --upgrade pip

# Stamps make a second `make test` skip the install, and redo it when pyproject.toml changes.
$(VENV)/.installed: pyproject.toml | $(PY)
	$(PIP) install -e .
	touch $@

$(VENV)/.installed-test: pyproject.toml | $(PY)
	$(PIP) install -e '.[test]'
	touch $@

$(VENV)/.installed-bench: pyproject.toml | $(PY)
	$(PIP) install -e '.[test,bench]'
	touch $@

install: $(VENV)/.installed

# Align the sample pairs with the installed `regtool`, then show recovered beside true values.
# Exits with regtool's status (1 if a registration did not converge), after printing both.
demo: $(VENV)/.installed
	@mkdir -p out
	@status=0; \
	for pair in "" _251x301; do \
	  echo "regtool align sample_images/target$$pair.png sample_images/source$$pair.png -o out/aligned$$pair.png"; \
	  $(VENV)/bin/regtool align sample_images/target$$pair.png sample_images/source$$pair.png \
	    -o out/aligned$$pair.png --params out/params$$pair.json --quiet || status=$$?; \
	  if [ -f out/params$$pair.json ]; then \
	    $(PY) sample_images/compare.py out/params$$pair.json sample_images/true_params$$pair.json; \
	  fi; \
	  echo; \
	done; \
	echo "Outputs in ./out/ (aligned images and their parameters)."; \
	exit $$status

test: $(VENV)/.installed-test
	$(VENV)/bin/ruff check regtool tests benchmarks sample_images
	$(PY) -m pytest -q

bench: $(VENV)/.installed-bench
	$(PY) benchmarks/bench.py

# Time and peak memory from 256^2 to 8192^2 (benchmarks/SCALING.md, RESULTS.md's Scaling section).
bench-scaling: $(VENV)/.installed-bench
	$(PY) benchmarks/scaling.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache
