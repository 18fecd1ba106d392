# The two set-up commands of the README: `make demo` and `make test`. Each creates .venv and installs the
# versions the suite was tested with (constraints.txt; pyproject.toml keeps the ranges for `pip install .`).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
CONSTRAINTS := constraints.txt

.PHONY: demo test lint clean

$(STAMP): pyproject.toml $(CONSTRAINTS)
	test -d $(VENV) || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q -c $(CONSTRAINTS) --upgrade pip
	$(BIN)/pip install -q -c $(CONSTRAINTS) -e ".[dev]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python demos/make_clip.py demo_out
	$(BIN)/track demo_out/clip.mp4 --points demo_out/points.json --model sift \
		--out-tracks demo_out/tracks.json --out-video demo_out/overlay.mp4
	$(BIN)/python demos/check_demo.py demo_out

test: $(STAMP)
	$(BIN)/ruff check tracker export demos benchmarks tests
	$(BIN)/python -m pytest -q -rs

clean:
	rm -rf $(VENV) demo_out
