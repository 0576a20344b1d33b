# microagent: the two quickstart commands are `make demo` and `make test`.
# Both are idempotent: every step checks before it acts.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
GUEST := src/microagent/guest/x86_64/microagent-init

.PHONY: demo test install host-deps venv guest firecracker pasta kernel slow-lane-kernel minimal-kernel clean bench

demo: install
	$(BIN)/microagent run builtin:busybox -- uname -a

test: install slow-lane-kernel minimal-kernel
	$(BIN)/lint-imports --no-cache
	$(BIN)/python -m pytest -p no:cacheprovider $(PYTEST_ARGS)

install: host-deps venv guest firecracker pasta kernel

host-deps:
	@scripts/host-deps.sh

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -e '.[test,mcp,ray]'
	touch $(STAMP)

# bytecode up front: an editable install compiles on first import, which a
# PYTHONDONTWRITEBYTECODE environment never keeps (every CLI call recompiles)
venv: $(STAMP)
	@$(BIN)/python -m compileall -q src/microagent

# x86_64 with musl-gcc; aarch64 cross-built with zig cc from the venv's ziglang
guest: venv
	$(MAKE) -s -C guest install DESTDIR=$(CURDIR)/src/microagent/guest
	$(MAKE) -s -C guest install ARCH=aarch64 DESTDIR=$(CURDIR)/src/microagent/guest \
	    ZIG="$(CURDIR)/$(BIN)/python -m ziglang"

firecracker: venv
	$(BIN)/python -m microagent.host.firecracker_binary install

# pasta 2025-05-03 built from Debian's source (Debian 12's resets long uploads): a no-op once built
pasta: venv
	$(BIN)/python -m microagent.host.pasta_binary install

kernel: venv guest
	$(BIN)/microagent kernel install --backend qemu --if-missing
	$(BIN)/microagent kernel install --backend qemu --arch aarch64 --if-missing
	$(BIN)/microagent kernel install --backend firecracker --if-missing

# The Firecracker slow-lane TEST kernel (tests/firecracker_slow/harness/README.md): never installed
# for users; built once (about 11 min on 2 cores) into ~/.microagent/cache, a no-op when cached
slow-lane-kernel: venv
	nice -n 19 $(BIN)/python tests/firecracker_slow/harness/build_kernel.py

# The minimal guest kernel (docs/kernels.md, `microagent kernel build`) that tests boot: built once
# (about 11 min on 2 cores) into ~/.microagent/cache, a no-op when cached; not installed for users
minimal-kernel: venv
	nice -n 19 $(BIN)/python -m microagent.kernels.build

bench: install
	$(BIN)/python bench/run_vs_qemu.py

clean:
	rm -rf $(VENV) guest/build src/microagent/guest
