# Two entry points, both working on a fresh machine:
#   make lab    set everything up, then open the lab book in JupyterLab
#   make test   set everything up, then lint and run every test (unit tests, notebooks and,
#               where a chromium binary exists, the real-browser tests)
#               notebooks run in smoke mode (short training); ODTKIT_SMOKE=0 make test runs them in full
#               tests run on every core (pytest-xdist; a notebook's cells stay together), one
#               thread each
#   make app    set everything up, then serve the budget explorer as a page (odtkit app:
#               Voila on 127.0.0.1; Ctrl-C stops it)
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.odtkit-installed
TORCH  := torch==2.13.0
# Jupyter refuses to run as root without being told; containers often are root.
LAB_FLAGS := $(if $(filter 0,$(shell id -u)),--allow-root,)

.PHONY: setup lab app test lint bench data student clean

setup: $(STAMP)

# The pinned CPU build of torch goes in first, so that the package's own
# torch requirement is already met and never pulls a GPU build. The app and browser
# extras (Voila, Playwright) come along, so that `make test` runs the browser tests, and
# odtkit's compiled ops are built (`odtkit native`: a C++ compiler and ninja; without a
# compiler it says so, the engine runs its Python ops and the codecs torch's).
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet $(TORCH)
	$(BIN)/python -m pip install --quiet -e ".[dev,app,browser,native]"
	-$(BIN)/odtkit native
	touch $@

lab: setup
	$(BIN)/jupyter lab --ServerApp.root_dir=labs $(LAB_FLAGS)

app: setup
	$(BIN)/odtkit app

test: setup
	$(BIN)/ruff check odtkit tests benchmarks data
	ODTKIT_SMOKE=$${ODTKIT_SMOKE:-1} OMP_NUM_THREADS=1 $(BIN)/python -m pytest -n auto --dist loadfile

lint: setup
	$(BIN)/ruff check odtkit tests benchmarks

bench: setup
	$(BIN)/python benchmarks/lean.py
	$(BIN)/python benchmarks/memory.py
	$(BIN)/python benchmarks/compress.py
	$(BIN)/python benchmarks/ddp.py
	$(BIN)/python benchmarks/federated.py
	$(BIN)/python benchmarks/quant.py
	$(BIN)/python benchmarks/sparse.py
	$(BIN)/python benchmarks/lab05.py

# the student edition (labs/student/): every master lab with its solutions as marked stubs
student: setup
	$(BIN)/python -m odtkit.lab.student

data: setup
	$(BIN)/python data/build_digits.py
	$(BIN)/python data/build_pretrained.py
	$(BIN)/python data/build_contributions.py

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
