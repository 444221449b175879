# The two set-up commands of the README. Each creates .venv/ (once), installs the project, then runs.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# The bundles are not inside the installed package: the demo and the tests find this checkout's here.
export CTFM_BUNDLES := $(CURDIR)/bundles
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

# The MONAI Label app's own environment (see monailabel_app/README.md): every package pinned in
# monailabel_app/requirements.txt, then monailabel and ctfm without their dependencies.
LABEL_VENV := .venv-label
LABEL_PY := $(LABEL_VENV)/bin/python
LABEL_STAMP := $(LABEL_VENV)/.installed
MONAILABEL_VERSION := 0.8.5

.PHONY: demo test bench browser label clean-venv

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# torch first and alone: pinned to the CPU build, so nothing pulls a multi-GB CUDA build.
	$(PY) -m pip install --quiet "torch==2.13.0"
	# Every extra (the README's commands install everything), at the exact tested versions.
	$(PY) -m pip install --quiet -c constraints.txt -e ".[all,test]"
	touch $(STAMP)

$(LABEL_STAMP): monailabel_app/requirements.txt pyproject.toml
	test -x $(LABEL_PY) || $(PYTHON) -m venv $(LABEL_VENV)
	$(LABEL_PY) -m pip install --quiet --upgrade pip
	$(LABEL_PY) -m pip install --quiet -r monailabel_app/requirements.txt
	# --no-deps: monailabel's own list asks for sam2, numpymaxflow and unpinned versions that cannot work here.
	$(LABEL_PY) -m pip install --quiet --no-deps "monailabel==$(MONAILABEL_VERSION)"
	$(LABEL_PY) -m pip install --quiet --no-deps -e .
	touch $(LABEL_STAMP)

label: $(LABEL_STAMP)

demo: $(STAMP)
	$(VENV)/bin/ctfm demo --output-dir demo_output

# The MONAI Label server test uses .venv-label (built here, so CI builds it the same way).
test: $(STAMP) $(LABEL_STAMP)
	$(PY) -m pytest tests

# The headless browser of the search app's test: Debian's chromium, which Playwright drives (it never
# downloads a browser). Once per machine; without it that one test is skipped.
browser:
	test -x /usr/bin/chromium || { $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq chromium; }

bench: $(STAMP)
	$(PY) -m benchmarks

clean-venv:
	rm -rf $(VENV) $(LABEL_VENV)
