# banger — run `make help` for the targets.
SHELL := /bin/bash
GO ?= go
PREFIX ?= /usr/local
BIN := bin
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -X github.com/banger-dev/banger/internal/version.Version=$(VERSION)
CMDS := banger bangerd banger-helper banger-agent

.DEFAULT_GOAL := help

.PHONY: help
help: ## show this help
	@awk 'BEGIN{FS=":.*## "} /^[a-zA-Z0-9_-]+:.*## /{printf "  %-14s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

.PHONY: build
build: ## build bin/banger, bin/bangerd, bin/banger-helper and bin/banger-agent (static: it goes into images)
	@mkdir -p $(BIN)
	$(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $(BIN)/ ./cmd/banger ./cmd/bangerd ./cmd/banger-helper
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $(BIN)/ ./cmd/banger-agent

.PHONY: install
install: build ## install the binaries into $(PREFIX)/bin (helper and agent into $(PREFIX)/libexec/banger)
	install -d $(PREFIX)/bin $(PREFIX)/libexec/banger
	install -m 0755 $(BIN)/banger $(BIN)/bangerd $(PREFIX)/bin/
	install -m 0755 $(BIN)/banger-helper $(BIN)/banger-agent $(PREFIX)/libexec/banger/

.PHONY: deps
deps: ## install the Debian packages banger and its tests need (root)
	./scripts/install-deps

.PHONY: test
test: ## unit tier: no root, no VM (go test -short)
	$(GO) test -short -race ./...

.PHONY: test-root
test-root: ## root tier: real netlink, nftables, loop devices, ext4 tools, in network namespaces (root)
	@[ "$$(id -u)" = 0 ] || { echo "test-root needs root"; exit 1; }
	$(GO) test -count=1 -timeout 30m ./...

.PHONY: test-e2e
test-e2e: ## end-to-end tier: real daemon, helper, CLI and qemu VMs in a network namespace (root)
	@[ "$$(id -u)" = 0 ] || { echo "test-e2e needs root"; exit 1; }
	BANGER_E2E=1 $(GO) test -count=1 -v -timeout 40m ./tests/e2e/
	@# The tests that need a real Debian kernel, given the one the e2e tier cached.
	k=$$(ls -t /var/cache/banger-test/images/e2e-*/vmlinuz | head -n 1) && [ -n "$$k" ] && \
	  BANGER_TEST_KERNEL=$$k $(GO) test -count=1 -v -run '^(TestExtractRealKernel|TestProbeKVMBoot|TestHaltedRealKernel)$$' ./internal/image/ ./internal/hostcheck/ ./internal/vmm/firecracker/

.PHONY: test-all
test-all: lint test test-root test-e2e ## every tier, as CI runs them

.PHONY: fuzz
fuzz: ## fuzz the RPC request decoder and the helper's gate, 30s each
	$(GO) test -run XXX -fuzz FuzzDecodeRequest -fuzztime 30s ./internal/rpc/
	$(GO) test -run XXX -fuzz FuzzGate -fuzztime 30s ./internal/helper/

.PHONY: bench
bench: ## Go benchmarks of the hot paths
	$(GO) test -run XXX -bench . -benchmem ./internal/...

.PHONY: bench-create
bench-create: ## measure create-to-SSH against a bare qemu boot, in a netns (root; ARGS="--runs N")
	./scripts/bench-create $(ARGS)

.PHONY: bench-mounts
bench-mounts: ## measure a host folder (virtio-fs) against the work disk, per virtiofsd setting, in a netns (root; RUNS=N)
	BANGER_BENCH=1 BANGER_BENCH_RUNS=$${RUNS:-3} $(GO) test -count=1 -timeout 30m -v -run '^TestBenchMounts$$' ./tests/bench/ | grep 'creates+stat\|MiB read\|^ok\|FAIL'

.PHONY: lint
lint: ## gofmt, go vet and go mod tidy must be clean
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...
	@$(GO) mod tidy; \
	if ! git diff --quiet -- go.mod go.sum; then echo "go mod tidy changed go.mod/go.sum"; git diff -- go.mod go.sum; exit 1; fi

.PHONY: clean
clean: ## remove build output
	rm -rf $(BIN)
