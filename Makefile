# The two commands of the README. Both set up the project virtualenv first (once; again only
# when pyproject.toml changes), so a fresh clone needs nothing but python3.
VENV ?= .venv
PY := $(VENV)/bin/python
# The CUDA build of torch. Empty: the tested default wheels (torch 2.14.1 for CUDA 13.0, which needs an NVIDIA
# driver >= 580; DALI's CUDA 13 build). For an older driver, `make setup CUDA=cu126` (or cu128, cpu, ...) installs
# torch 2.14.1 from PyTorch's index for that build and DALI's CUDA 12 build (README "Older NVIDIA drivers"). The
# choice is kept in $(VENV)/.cuda, so a later `make test` keeps it; `make setup CUDA=` returns to the default.
# A change of build uninstalls torch, torchvision and DALI first (pip would keep the same version of another build).
CUDA ?= $(shell cat $(VENV)/.cuda 2>/dev/null)
TORCH_INDEX := https://download.pytorch.org/whl
BUILD := $(if $(CUDA),+$(CUDA))# the local version label pins the build: a plain ==2.14.1 keeps the installed one
TORCH := torch==2.14.1$(BUILD) torchvision==0.29.1$(BUILD)$(if $(CUDA), --index-url $(TORCH_INDEX)/$(CUDA))
DALI := $(if $(filter cu12%,$(CUDA)),dali-cuda12,dali)
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)$(if $(CUDA),-$(CUDA))

FFCV_SYSTEM_PACKAGES := pkg-config libturbojpeg0-dev libopencv-dev

.PHONY: setup demo test bench clean-demo ffcv-system-packages

setup: $(STAMP)

$(STAMP): pyproject.toml
	@python3 -c 'import sys; sys.exit(sys.version_info < (3, 10))' || { echo "msf-fast needs Python >= 3.10"; exit 1; }
	@case "$(CUDA)" in ""|cpu|cu[0-9][0-9]*) ;; *) echo "CUDA=$(CUDA): expected empty (the default wheels), \
		cu126, cu128, cu130, cu132 or cpu (README \"Older NVIDIA drivers\")"; exit 1 ;; esac
	@test -x $(PY) || python3 -m venv $(VENV) || { command -v apt-get >/dev/null && \
		apt-get update -qq && apt-get install -y -qq python3-venv && python3 -m venv $(VENV); }
	@[ "$$(cat $(VENV)/.cuda 2>/dev/null)" = "$(CUDA)" ] || $(PY) -m pip uninstall -q -y torch torchvision \
		nvidia-dali-cuda120 nvidia-dali-cuda130 2>/dev/null || true
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH)  # the tested versions (pyproject allows a range)
	$(PY) -m pip install -q -e '.[test]'
	@$(MAKE) --no-print-directory ffcv-system-packages || echo "note: FFCV's system libraries are missing"
	$(PY) -m pip install -q -e '.[ffcv]' || echo "note: FFCV did not install; its loader and tests are skipped"
	$(PY) -m pip install -q -e '.[$(DALI)]' || echo "note: DALI did not install; its loader and tests are skipped"
	@$(PY) -c 'from pipelines.antialias_resize import compile_ahead; compile_ahead()' \
		|| echo "note: the resize was not compiled ahead; each process that resizes compiles it (5-8 s)"
	@rm -f $(VENV)/.installed-*
	@if [ -n "$(CUDA)" ]; then echo "$(CUDA)" > $(VENV)/.cuda; else rm -f $(VENV)/.cuda; fi
	@touch $@

demo: setup
	$(PY) -m msf_fast.demo

# one pytest-xdist worker per core (at most 4), each confined to its share of the cores (tests/conftest.py)
test: setup
	$(PY) -m pytest -q -n auto --maxprocesses=4

bench: setup
	$(PY) -m msf_fast.bench bank
	$(PY) -m msf_fast.bench ema

clean-demo:
	rm -rf data/demo runs/demo

# FFCV compiles against libturbojpeg and OpenCV; install them with apt when missing (needs root).
ffcv-system-packages:
	@dpkg -s $(FFCV_SYSTEM_PACKAGES) >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(FFCV_SYSTEM_PACKAGES) >/dev/null; }
