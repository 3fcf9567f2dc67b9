# The README's two commands: `make demo` and `make test`. Each creates .venv when missing and
# installs torch==$(TORCH_VERSION) first (a CPU wheel here), then eurotron, so nothing upgrades torch.
TORCH_VERSION ?= 2.13.0
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.eurotron-installed-$(TORCH_VERSION)
PYTEST_ARGS ?=
DEMO_RUN ?= runs/demo
# The demo trains under a real multi-process layout: TP2 x PP2 on 4 CPU processes (gloo).
# `make demo DEMO_LAYOUT=single DEMO_NPROC=1` trains in one process instead.
DEMO_LAYOUT ?= tp2_pp2
DEMO_NPROC ?= 4
# Greedy text from a 7M-parameter model repeats itself; both generators apply the same penalty.
DEMO_REPETITION_PENALTY ?= 1.3
DEMO_PROMPTS := --prompt "Die Bibliothek" --prompt "La ville" --prompt "The railway"

.PHONY: demo test install clean

install: $(STAMP)

# EXTRAS: the [deepspeed] extra (the DeepSpeed ZeRO engine) installs after torch, its ops not compiled
# (DS_BUILD_OPS=0: eurotron's AdamW runs the update) and without build isolation (its setup.py imports
# the torch installed here, never a second one; the build tools it needs come first). `make install
# EXTRAS=dev` leaves it out.
EXTRAS ?= dev,deepspeed
$(STAMP): pyproject.toml setup.py src/eurotron/data/_native.c
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check torch==$(TORCH_VERSION)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check 'setuptools>=77' wheel packaging
	DS_BUILD_OPS=0 $(BIN)/python -m pip install --quiet --disable-pip-version-check --no-build-isolation \
		-e '.[$(EXTRAS)]'
	@touch $(STAMP)

# prepare data → train the tiny model on CPU (TP2 x PP2, 4 processes) → checkpoint → generate text → convert to HF → generate with transformers
demo: $(STAMP)
	$(BIN)/eurotron-prepare overwrite=true
	rm -rf $(DEMO_RUN)
	OMP_NUM_THREADS=1 $(BIN)/torchrun --standalone --nproc-per-node=$(DEMO_NPROC) --no-python \
		$(BIN)/eurotron-train experiment=demo parallel=$(DEMO_LAYOUT) run_dir=$(DEMO_RUN)
	$(BIN)/eurotron-generate $(DEMO_RUN) $(DEMO_PROMPTS) --repetition-penalty $(DEMO_REPETITION_PENALTY)
	$(BIN)/eurotron-convert to-hf $(DEMO_RUN) $(DEMO_RUN)/hf
	$(BIN)/python scripts/hf_generate.py $(DEMO_RUN)/hf $(DEMO_PROMPTS) --repetition-penalty $(DEMO_REPETITION_PENALTY)

test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) runs data/demo
