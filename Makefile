# The README's commands. `make demo` runs the whole pipeline on a generated GQA sample
# (`make demo DATASET=vqa2` or `DATASET=nlvr2`: that task's sample), in $(DATA)/demo/$(DATASET)/ only
# (`make demo DATA=/scratch/butd`: elsewhere); `make test` runs the tests. Both set up the virtual
# environment first.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
DATA ?= data
DATASET ?= gqa

.PHONY: install demo test bench clean

install: $(VENV)/.installed

# torch first, pinned: on our machines torch==2.13.0 is a local CPU build, while an unpinned
# torch requirement would pull gigabytes of CUDA packages.
$(VENV)/.installed: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

demo: install
	$(PY) -m butd.demo --data $(DATA) --dataset $(DATASET)

test: install
	$(PY) -m pytest -q

bench: install
	$(PY) benchmarks/convert_speed.py
	$(PY) benchmarks/questions_speed.py
	$(PY) benchmarks/loader_speed.py
	$(PY) benchmarks/larger_than_ram.py
	$(PY) benchmarks/step_speed.py
	$(PY) benchmarks/gqa_eval_memory.py

clean:
	rm -rf $(VENV) *.egg-info
