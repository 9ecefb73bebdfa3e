# flashgate — the two set-up commands are `make run` and `make test`;
# `make` alone lists every target (each documented by its `## ` comment).
GO      ?= go
BIN     := bin
PKGS    := ./...
# Tests run real servers (redis-server, embedded NATS): keep them serial per
# package set and bounded in time; CI's limit is 90 min, ours is 15.
TESTFLAGS ?= -count=1 -timeout 14m

.PHONY: help all build run test test-short lint deps fuzz bench bench-claim clean
.DEFAULT_GOAL := help

help: ## list the targets
	@echo 'flashgate: make <target>'
	@awk 'BEGIN {FS = ":.*## "} /^[a-z][a-z-]*:.*## / {printf "  %-12s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

all: build ## same as build

build: ## build bin/flashgate and bin/flashbench
	$(GO) build -o $(BIN)/ ./cmd/...

deps: ## install redis-server / PostgreSQL if missing (test dependencies)
	bash scripts/test-deps.sh

run: build ## start redis-server if needed and the gateway with a demo campaign
	bash scripts/dev-up.sh
	$(BIN)/flashgate serve --config scripts/dev.yaml --demo

# Race pass over the concurrent packages (the process-crash tests in
# cmd/flashgate run once, without it: they are slow and drive subprocesses).
RACEPKGS := ./gateway/... ./ledger/... ./antifraud/... ./bench/... ./cmd/flashbench/...

test: deps build ## go vet, every test (-tags invariants), then a -race pass
	$(GO) vet $(PKGS)
	$(GO) test $(TESTFLAGS) -tags invariants $(PKGS)
	$(GO) test $(TESTFLAGS) -race $(RACEPKGS)

test-short: ## the tests without the multi-second drop and crash tests
	$(GO) test -short -count=1 $(PKGS)

# Short fuzz runs of every decoder of untrusted or persisted bytes.
fuzz: ## 30 s of every fuzzer
	$(GO) test ./ledger -run '^$$' -fuzz FuzzRecordDecode -fuzztime 30s
	$(GO) test ./gateway -run '^$$' -fuzz FuzzParseClaim -fuzztime 30s
	$(GO) test ./gateway -run '^$$' -fuzz FuzzVerifyToken -fuzztime 30s
	$(GO) test ./gateway -run '^$$' -fuzz FuzzClientIP -fuzztime 30s
	$(GO) test ./gateway -run '^$$' -fuzz FuzzParseCheckoutBodies -fuzztime 30s
	$(GO) test ./ledger/sink -run '^$$' -fuzz FuzzDecode -fuzztime 30s
	$(GO) test ./ledger/relay -run '^$$' -fuzz FuzzDecode -fuzztime 30s
	$(GO) test ./gateway/checkout -run '^$$' -fuzz FuzzQuote -fuzztime 30s
	$(GO) test ./gateway/checkout -run '^$$' -fuzz FuzzApportion -fuzztime 30s

# Go benchmark of the claim handler (in-memory listener, real Redis, real ledger).
bench-claim: ## Go benchmark of the claim handler
	$(GO) test ./gateway -run '^$$' -bench BenchmarkClaim -benchmem -benchtime 5s

# Open-model load against the local stack, next to a fasthttp hello-world.
bench: build ## open-model load against the local stack (scripts/bench.sh)
	bash scripts/bench.sh

clean: ## remove bin/ and data/
	rm -rf $(BIN) data

# staticcheck, pinned: 2026.2.2 (v0.8.2) is the first release line that
# understands Go 1.26. Installed once into .tools/ (ignored by git) by
# `go install` through the module proxy; bump the version to re-install.
STATICCHECK_VERSION := v0.8.2
STATICCHECK := $(CURDIR)/.tools/staticcheck-$(STATICCHECK_VERSION)/staticcheck

lint: $(STATICCHECK) ## gofmt (fails on unformatted files), go vet, staticcheck
	@unformatted=$$(gofmt -l .); \
	if [ -n "$$unformatted" ]; then echo "gofmt: these files are not formatted (run gofmt -w):"; echo "$$unformatted"; exit 1; fi
	$(GO) vet $(PKGS)
	$(STATICCHECK) $(PKGS)

$(STATICCHECK):
	GOBIN=$(dir $@) $(GO) install honnef.co/go/tools/cmd/staticcheck@$(STATICCHECK_VERSION)
