# The two commands of the README. Both set up the project virtualenv first (once; again only
# when pyproject.toml changes), so a fresh clone needs nothing but python3.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)

FFCV_SYSTEM_PACKAGES := pkg-config libturbojpeg0-dev libopencv-dev

.PHONY: setup demo test bench clean-demo ffcv-system-packages

setup: $(STAMP)

$(STAMP): pyproject.toml
	@python3 -c 'import sys; sys.exit(sys.version_info < (3, 10))' || { echo "msf-fast needs Python >= 3.10"; exit 1; }
	@test -x $(PY) || python3 -m venv $(VENV) || { command -v apt-get >/dev/null && \
		apt-get update -qq && apt-get install -y -qq python3-venv && python3 -m venv $(VENV); }
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.14.1 torchvision==0.29.1  # the tested versions (pyproject allows a range)
	$(PY) -m pip install -q -e '.[test]'
	@$(MAKE) --no-print-directory ffcv-system-packages || echo "note: FFCV's system libraries are missing"
	$(PY) -m pip install -q -e '.[ffcv]' || echo "note: FFCV did not install; its loader and tests are skipped"
	$(PY) -m pip install -q -e '.[dali]' || echo "note: DALI did not install; its loader and tests are skipped"
	@rm -f $(VENV)/.installed-*
	@touch $@

demo: setup
	$(PY) -m msf_fast.demo

test: setup
	$(PY) -m pytest -q

bench: setup
	$(PY) -m msf_fast.bench bank
	$(PY) -m msf_fast.bench ema

clean-demo:
	rm -rf data/demo runs/demo

# FFCV compiles against libturbojpeg and OpenCV; install them with apt when missing (needs root).
ffcv-system-packages:
	@dpkg -s $(FFCV_SYSTEM_PACKAGES) >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(FFCV_SYSTEM_PACKAGES) >/dev/null; }
