# buildbridge — `make run` starts the hub, `make test` runs every test.
GO      ?= go
BIN     := bin/buildbridge
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -X main.version=$(VERSION)
DATA    ?= ./data

.PHONY: run build web test test-go test-rules test-node lint bench clean

build: web
	$(GO) build -ldflags "$(LDFLAGS)" -o $(BIN) ./cmd/buildbridge

# The dashboard bundle: pusher-js and the sources in web/src, bundled by
# esbuild into web/dist (git-ignored), which the binary embeds.
WEB_SRC := $(wildcard web/src/*)

web: web/dist/app.js

web/dist/app.js: web/node_modules/.installed $(WEB_SRC)
	cd web && npm run --silent build

web/node_modules/.installed: web/package.json web/package-lock.json
	cd web && npm ci --no-audit --no-fund
	touch $@

run: build
	$(BIN) serve --data $(DATA)

# Every test: formatting and vet, the Go suites with the race detector
# (PostgreSQL and NATS ones when those answer; scripts/services.sh starts
# them if they are installed but down) and their fuzz seed corpora, the
# example rules file, and the client tests (pusher-js, headless Chromium).
test: lint build
	$(MAKE) --no-print-directory test-go
	$(MAKE) --no-print-directory test-rules
	$(MAKE) --no-print-directory test-node

test-go:
	@eval "$$(bash scripts/services.sh)"; \
	  echo "postgres: $${BUILDBRIDGE_TEST_POSTGRES:-not available}; nats: $${BUILDBRIDGE_TEST_NATS:-not available}"; \
	  $(GO) test -race -count=1 -timeout 12m ./...

test-rules: build
	$(BIN) rules check --skip-secrets rules.example.yaml

# Client tests: the official pusher-js and the dashboard in headless
# Chromium, against a real `buildbridge serve` (two nodes on PostgreSQL
# and NATS when those answer).
test-node: build test/node/node_modules/.installed
	bash scripts/chromium.sh
	@eval "$$(bash scripts/services.sh)"; \
	  cd test/node && BUILDBRIDGE_BIN=$(CURDIR)/$(BIN) node --test --test-concurrency=1 --test-timeout=180000 *.test.js

test/node/node_modules/.installed: test/node/package.json test/node/package-lock.json
	cd test/node && npm ci --no-audit --no-fund
	touch $@

lint:
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt would change:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...

# Benchmarks and load tools; figures go to bench/README.md.
bench:
	$(GO) test -run '^$$' -bench . -benchmem ./...

clean:
	rm -rf bin web/dist/app.* web/dist/*.map
