# Esper: `make demo` and `make test` work from a fresh clone (they create .venv,
# install PyTorch and the package, and build the Go library).

SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
VERSION := $(shell cat VERSION)
COMMIT := $(shell git rev-parse --short HEAD 2>/dev/null || echo unknown)
LIB := python/esper/_lib/libesper.so
# The test variant: the production exports plus capi/testexports.go (esper_test_panic); never shipped.
TEST_LIB := build/test/libesper.so
# The variant without the NATS client (-tags esper_nonats): its NATS calls refuse, saying so; `make bench`
# compares its size and RSS with the default build's.
NONATS_LIB := build/nonats/libesper.so
GO_SOURCES := $(shell find capi core policy blueprint -name '*.go' -not -name '*_test.go') go.mod go.sum capi/exports.map VERSION
LDFLAGS := -s -w -X main.version=$(VERSION) -X main.commit=$(COMMIT) -extldflags -Wl,--version-script=$(CURDIR)/capi/exports.map
# A count, not a duration: a duration's deadline races the fuzz workers in Go 1.26 and fails a
# clean run with "context deadline exceeded" on a loaded machine (golang/go#75804, fixed in 1.27).
FUZZTIME ?= 2000x
# The NATS server the tests start (and `esper oona serve` runs): nats-server from the version pinned in go.mod.
NATS_SERVER := build/bin/esper-nats
# The S3-compatible server the Urza-on-S3 tests start: versitygw, pinned in its own module
# (tools/s3server/go.mod) so its dependencies stay out of the library's go.mod.
S3_SERVER := build/bin/esper-s3

# ONNX Runtime for the ONNX inference path (core/onnxrt): libonnxruntime.so.1 for linux-x64 from the npm
# package onnxruntime-node (MIT), which ships the prebuilt library in its registry tarball (its postinstall
# script only fetches CUDA binaries, and `npm pack` runs no scripts). onnxruntime_go v1.27.0 needs ORT >= 1.24
# (C API version 24). Placed beside libesper.so, where the core looks first; ESPER_ONNXRUNTIME_LIB overrides.
ORT_VERSION := 1.24.1
ORT_TGZ_SHA256 := 57181cf6e6e711b155c5b942d591fd63ded0b5de5c4922d51fd994e7f6ac2772
ORT_LIB_SHA256 := 53ef1ac028dd1b05554b8da28d9159eb3876f99868193d2aaa6e67f0243c23d4
ORT_LIB_SIZE := 35057880
ORT_LIB := python/esper/_lib/libonnxruntime.so.1

.DEFAULT_GOAL := help
.PHONY: help lib test-lib nonats-lib nats-server s3-server onnxruntime venv test test-go test-py fuzz demo bench lint fmt clean

help: ## Show this help.
	@echo "Esper $(VERSION): morphogenetic training for PyTorch with a Go core"
	@echo
	@grep -E '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

lib: $(LIB) ## Build the Go core into python/esper/_lib/libesper.so.

$(LIB): $(GO_SOURCES)
	@mkdir -p $(dir $@)
	CGO_ENABLED=1 go build -buildmode=c-shared -trimpath -ldflags "$(LDFLAGS)" -o $@ ./capi
	@rm -f $(basename $@).h

test-lib: $(TEST_LIB) ## Build the test variant of the library (test-only exports) into build/test/.

$(TEST_LIB): $(GO_SOURCES) capi/testexports.go
	@mkdir -p $(dir $@)
	CGO_ENABLED=1 go build -tags esper_test -buildmode=c-shared -trimpath -ldflags "$(LDFLAGS)" -o $@ ./capi
	@rm -f $(basename $@).h

nonats-lib: $(NONATS_LIB) ## Build the library without the NATS client (-tags esper_nonats) into build/nonats/.

$(NONATS_LIB): $(GO_SOURCES)
	@mkdir -p $(dir $@)
	CGO_ENABLED=1 go build -tags esper_nonats -buildmode=c-shared -trimpath -ldflags "$(LDFLAGS)" -o $@ ./capi
	@rm -f $(basename $@).h

nats-server: $(NATS_SERVER) ## Build the NATS server (nats-server, pinned in go.mod) into build/bin/esper-nats.

$(NATS_SERVER): go.mod go.sum
	@mkdir -p $(dir $@)
	CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o $@ github.com/nats-io/nats-server/v2

onnxruntime: $(ORT_LIB) ## Fetch libonnxruntime.so.1 (npm onnxruntime-node, checked by sha256) beside libesper.so.
	@echo "$(ORT_LIB_SHA256)  $(ORT_LIB)" | sha256sum -c --status || { \
	  echo "make onnxruntime: $(ORT_LIB) is not ONNX Runtime $(ORT_VERSION) as pinned (sha256 differs): remove it and run make onnxruntime again"; exit 1; }

$(ORT_LIB):
	@mkdir -p $(dir $@) build/onnxruntime
	@set -euo pipefail; \
	case "$$(uname -s)-$$(uname -m)" in Linux-x86_64) ;; *) \
	  echo "make onnxruntime: only linux-x64 is pinned here; set ESPER_ONNXRUNTIME_LIB to a libonnxruntime >= 1.24"; exit 1;; esac; \
	tgz=build/onnxruntime/onnxruntime-node-$(ORT_VERSION).tgz; \
	if [ ! -f $$tgz ] || ! echo "$(ORT_TGZ_SHA256)  $$tgz" | sha256sum -c --status; then \
	  rm -f $$tgz; \
	  if command -v npm >/dev/null; then \
	    npm pack --silent --pack-destination build/onnxruntime onnxruntime-node@$(ORT_VERSION) >/dev/null; \
	  else \
	    curl -fsSL -o $$tgz https://registry.npmjs.org/onnxruntime-node/-/onnxruntime-node-$(ORT_VERSION).tgz; \
	  fi; \
	fi; \
	echo "$(ORT_TGZ_SHA256)  $$tgz" | sha256sum -c --status || { echo "make onnxruntime: $$tgz has the wrong sha256"; exit 1; }; \
	tar -xzf $$tgz -O package/bin/napi-v6/linux/x64/libonnxruntime.so.1 > $@.tmp; \
	test "$$(stat -c %s $@.tmp)" = $(ORT_LIB_SIZE) || { echo "make onnxruntime: unexpected size"; rm -f $@.tmp; exit 1; }; \
	echo "$(ORT_LIB_SHA256)  $@.tmp" | sha256sum -c --status || { echo "make onnxruntime: wrong sha256"; rm -f $@.tmp; exit 1; }; \
	mv $@.tmp $@; rm -f $$tgz; \
	echo "installed $@ (ONNX Runtime $(ORT_VERSION), $(ORT_LIB_SIZE) bytes, sha256 $(ORT_LIB_SHA256))"

s3-server: $(S3_SERVER) ## Build the S3 test server (versitygw, pinned in tools/s3server/go.mod) into build/bin/esper-s3.

$(S3_SERVER): tools/s3server/go.mod tools/s3server/go.sum
	@mkdir -p $(dir $@)
	cd tools/s3server && CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o $(CURDIR)/$@ github.com/versity/versitygw/cmd/versitygw

venv: $(VENV)/.installed ## Create .venv with PyTorch and the package (editable).

$(VENV)/.installed: pyproject.toml setup.py
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip setuptools wheel
	$(PIP) install -q --no-build-isolation -e '.[dev]'
	touch $@

test: test-go test-py ## Run every test (Go, fuzz briefly, Python).

test-go: $(ORT_LIB) $(S3_SERVER) ## Go tests, then each fuzz target briefly (core/onnxrt loads libonnxruntime).
	go vet ./...
	go test -count=1 ./...
	$(MAKE) --no-print-directory fuzz

fuzz: ## Run every Fuzz target for FUZZTIME (default 2000x: executions, not seconds).
	@for pkg in $$(go list ./...); do \
	  for f in $$(go test -list '^Fuzz' $$pkg 2>/dev/null | grep '^Fuzz'); do \
	    echo "fuzz $$pkg $$f"; go test -run '^$$' -fuzz "^$$f$$" -fuzztime $(FUZZTIME) $$pkg || exit 1; \
	  done; \
	done

test-py: venv $(LIB) $(TEST_LIB) $(NONATS_LIB) $(NATS_SERVER) $(ORT_LIB) $(S3_SERVER) ## Python tests (real PyTorch, the real library).
	$(PY) -m pytest -q tests_py

demo: venv $(LIB) ## Grow models on digits and spirals; prints a table, writes demo_out/.
	$(PY) -m esper demo

bench: venv $(LIB) $(NONATS_LIB) $(NATS_SERVER) ## Measure Esper against plain PyTorch and PEFT; writes bench/results/.
	$(PY) -m esper bench

lint: venv ## gofmt, go vet and ruff (check only).
	@out=$$(gofmt -l capi core policy blueprint tests_go); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	go vet ./...
	$(VENV)/bin/ruff check python tests_py

fmt: venv ## Rewrite Go and Python sources in canonical format.
	gofmt -w capi core policy blueprint tests_go
	$(VENV)/bin/ruff format python tests_py

clean: ## Remove build outputs (keeps .venv).
	rm -rf build dist python/esper/_lib/libesper.so python/*.egg-info
