# flashgate — the two set-up commands are `make run` and `make test`.
GO      ?= go
BIN     := bin
PKGS    := ./...
# Tests run real servers (redis-server, embedded NATS): keep them serial per
# package set and bounded in time; CI's limit is 90 min, ours is 15.
TESTFLAGS ?= -count=1 -timeout 14m

.PHONY: all build run test test-short deps fuzz bench bench-claim clean

all: build

build:
	$(GO) build -o $(BIN)/ ./cmd/...

deps:
	bash scripts/test-deps.sh

run: build
	bash scripts/dev-up.sh
	$(BIN)/flashgate serve --config scripts/dev.yaml --demo

# Race pass over the concurrent packages (the process-crash tests in
# cmd/flashgate run once, without it: they are slow and drive subprocesses).
RACEPKGS := ./gateway/... ./ledger/... ./antifraud/... ./bench/... ./cmd/flashbench/...

test: deps build
	$(GO) vet $(PKGS)
	$(GO) test $(TESTFLAGS) -tags invariants $(PKGS)
	$(GO) test $(TESTFLAGS) -race $(RACEPKGS)

test-short:
	$(GO) test -short -count=1 $(PKGS)

# Short fuzz runs of every decoder of untrusted or persisted bytes.
fuzz:
	$(GO) test ./ledger -run '^$$' -fuzz FuzzRecordDecode -fuzztime 30s
	$(GO) test ./gateway -run '^$$' -fuzz FuzzParseClaim -fuzztime 30s
	$(GO) test ./gateway -run '^$$' -fuzz FuzzVerifyToken -fuzztime 30s
	$(GO) test ./gateway -run '^$$' -fuzz FuzzClientIP -fuzztime 30s
	$(GO) test ./ledger/sink -run '^$$' -fuzz FuzzDecode -fuzztime 30s
	$(GO) test ./ledger/relay -run '^$$' -fuzz FuzzDecode -fuzztime 30s

# Go benchmark of the claim handler (in-memory listener, real Redis, real ledger).
bench-claim:
	$(GO) test ./gateway -run '^$$' -bench BenchmarkClaim -benchmem -benchtime 5s

# Open-model load against the local stack, next to a fasthttp hello-world.
bench: build
	bash scripts/bench.sh

clean:
	rm -rf $(BIN) data
