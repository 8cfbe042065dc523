# xenrr build: `make` sets up everything (system packages, venv, patched engine spec, guests).
# `make test`, `make demo` and `make bench` depend on it, so each works on a fresh clone.
PYTHON   ?= python3
VENV     := .venv
PY       := $(VENV)/bin/python
STAMP    := $(VENV)/.installed
SPEC     := build/engine-spec/.stamp
SYSDEPS  := build/.sysdeps
# Debian packages: gdb (end-to-end tests, `xenrr debug`), libxen-dev (the real Xen public headers the
# guests are built against), patch (applies the engine spec patch set), tmux (terminal tests of the shell),
# grub-xen-host + grub-xen-bin (Debian's GRUB 2 Xen PV image and its kernel.img/modules: the first PV
# kernel written by others that xenrr boots), grub-xen-dbg (the modules' symbols and DWARF, for GDB) and
# grub-common (grub-mkimage, to build other GRUB images).
APT_PKGS := gdb libxen-dev patch tmux grub-xen-host grub-xen-bin grub-xen-dbg grub-common

.PHONY: all test soak demo bench guests engine bytecode sysdeps clean
all: $(SYSDEPS) $(STAMP) $(SPEC) guests bytecode

$(SYSDEPS):
	@missing=""; \
	command -v gdb >/dev/null || missing="$$missing gdb"; \
	test -f /usr/include/xen/xen.h || missing="$$missing libxen-dev"; \
	command -v patch >/dev/null || missing="$$missing patch"; \
	command -v tmux >/dev/null || missing="$$missing tmux"; \
	test -f /usr/lib/grub-xen/grub-x86_64-xen.bin || missing="$$missing grub-xen-host"; \
	test -f /usr/lib/grub/x86_64-xen/kernel.img || missing="$$missing grub-xen-bin"; \
	test -f /usr/lib/grub/x86_64-xen/normal.module || missing="$$missing grub-xen-dbg"; \
	command -v grub-mkimage >/dev/null || missing="$$missing grub-common"; \
	if [ -n "$$missing" ]; then \
	  echo "installing system packages:$$missing"; \
	  if [ "$$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $(APT_PKGS) >/dev/null; \
	fi
	@mkdir -p build && touch $@

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	# An editable install as a plain path entry (setuptools' compat mode): the default mode puts an import
	# hook in every interpreter's start-up (~8 ms each, pathlib included), where `xenrr` and its fork server's
	# clients pay it. A setuptools without compat mode gets the default.
	$(VENV)/bin/pip install -q -e '.[test]' --config-settings editable_mode=compat 2>/dev/null || \
	  $(VENV)/bin/pip install -q -e '.[test]'
	@touch $@

# The engine's x86 SLEIGH spec with the project's patch set applied (xen/sleigh/*.patch).
$(SPEC): $(STAMP) $(wildcard xen/sleigh/*.patch) xen/vcpu.py
	$(PY) -m xen.vcpu prepare-spec

engine: $(SPEC)

# The project's modules compiled once (only the changed ones again): a command then starts without
# compiling its modules, also where PYTHONDONTWRITEBYTECODE keeps Python from caching them itself.
bytecode: $(STAMP)
	$(PY) -m compileall -q xen dom0 host stub gdbext >/dev/null

guests: $(SYSDEPS)
	$(MAKE) -C guests

# On every core (pytest-xdist); --dist loadscope keeps a module's tests, and so its module-scoped recordings,
# on one worker.
test: all
	$(PY) -m pytest -q -p no:cacheprovider -n auto --dist loadscope tests

# The five reliability campaigns at soak size (tests/*: campaign_size): log mutation, SIGKILL of recorder
# and daemon, RSP fuzz, random hypercalls + faults, CLI limits. Long: run it when touching those parts.
SOAK_TESTS := tests/dom0/test_log_mutation.py tests/dom0/test_sigkill_campaign.py \
	tests/stub/test_stub_campaign.py tests/xen/test_hostile_fuzz.py tests/dom0/test_cli_limits.py
soak: all
	XENRR_SOAK=1 $(PY) -m pytest -q -p no:cacheprovider $(SOAK_TESTS)

demo: all
	$(PY) scripts/demo.py

bench: all
	$(PY) scripts/bench.py

clean:
	rm -rf build
	$(MAKE) -C guests clean
