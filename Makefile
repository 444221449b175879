# The two set-up commands of the README. Each creates .venv/ (once), installs the project, then runs.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# The bundles are not inside the installed package: the demo and the tests find this checkout's here.
export CTFM_BUNDLES := $(CURDIR)/bundles
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: demo test bench browser clean-venv

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# torch first and alone: pinned to the CPU build, so nothing pulls a multi-GB CUDA build.
	$(PY) -m pip install --quiet "torch==2.13.0"
	# Every extra (the README's commands install everything), at the exact tested versions.
	$(PY) -m pip install --quiet -c constraints.txt -e ".[all,test]"
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/ctfm demo --output-dir demo_output

test: $(STAMP)
	$(PY) -m pytest tests

# The headless browser of the search app's test: Debian's chromium, which Playwright drives (it never
# downloads a browser). Once per machine; without it that one test is skipped.
browser:
	test -x /usr/bin/chromium || { $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq chromium; }

bench: $(STAMP)
	$(PY) -m benchmarks

clean-venv:
	rm -rf $(VENV)
