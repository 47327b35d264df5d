# Development and deployment tasks. sqlc and dbmate run through `go tool`,
# pinned in go.mod, so nothing needs installing besides Go.
#
# `make help` lists the targets from the `## ` comment after each one.

SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help
MAKEFLAGS += --no-print-directory

MIGRATIONS_DIR := db/migrations
DBMATE := go tool dbmate --migrations-dir $(MIGRATIONS_DIR) --no-dump-schema

# Development database of migrate, reset and status when DATABASE_URL is
# unset or empty. deploy-migrate never uses it.
DEV_DATABASE_URL := postgres://postgres@127.0.0.1:5432/pgguard_dev?sslmode=disable

# The recipes read DATABASE_URL in the shell, never through a make variable,
# so make neither expands a "$" in a password nor prints a URL from the
# environment when it echoes a command.
USE_DEV_DEFAULT := export DATABASE_URL="$${DATABASE_URL:-$(DEV_DATABASE_URL)}";

# describe_database prints $(1) followed by the database name and host of
# $DATABASE_URL, without the user or password. A Unix socket URL has no
# host, so the host= parameter is shown instead.
describe_database = \
	rest="$${DATABASE_URL\#*://}"; \
	authority="$${rest%%[/?]*}"; \
	host="$${authority\#\#*@}"; \
	path="$${rest\#"$$authority"}"; \
	name="$${path\#/}"; name="$${name%%\?*}"; \
	query=""; case "$$rest" in *\?*) query="$${rest\#*\?}";; esac; \
	if [ -z "$$host" ]; then \
		host="$$(tr '&' '\n' <<<"$$query" | sed -n 's/^host=//p' | head -n 1)"; \
		host="$$(printf '%b' "$${host//%/\\x}")"; \
		host="$${host:-the default socket}"; \
	fi; \
	echo "$(1) database \"$${name:-(named after the user)}\" on host $$host"

.PHONY: help
help: ## List the targets
	@grep -E '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | \
		awk 'BEGIN { FS = ":.*## " } { printf "  %-16s %s\n", $$1, $$2 }'

.PHONY: generate
generate: ## Generate the typed queries in dbgen/ with sqlc
	go tool sqlc generate

.PHONY: verify
verify: ## Check that dbgen/ matches sqlc, go.mod is tidy and gofmt is clean
	go tool sqlc diff
	go mod tidy -diff
	@unformatted="$$(gofmt -l .)"; \
	if [ -n "$$unformatted" ]; then \
		echo "gofmt: these files need formatting (run gofmt -w):"; \
		echo "$$unformatted"; \
		exit 1; \
	fi

.PHONY: migrate
migrate: ## Apply pending migrations to DATABASE_URL (default: local pgguard_dev), then generate
	@$(USE_DEV_DEFAULT) $(call describe_database,Migrating)
	$(USE_DEV_DEFAULT) $(DBMATE) --url "$$DATABASE_URL" up
	$(MAKE) generate

.PHONY: new-migration
new-migration: ## Create db/migrations/<timestamp>_NAME.sql, e.g. make new-migration NAME=add_index
	@if [ -z "$(NAME)" ]; then \
		echo "new-migration: NAME is missing; run make new-migration NAME=short_description"; \
		exit 1; \
	fi
	@if ! [[ "$(NAME)" =~ ^[a-z0-9_]+$$ ]]; then \
		echo "new-migration: NAME \"$(NAME)\" is invalid; use lower-case letters, digits and underscores"; \
		exit 1; \
	fi
	go tool dbmate --migrations-dir $(MIGRATIONS_DIR) new $(NAME)

.PHONY: deploy-migrate
deploy-migrate: ## Production: apply pending migrations to DATABASE_URL, which must be set
	@if [ -z "$${DATABASE_URL:-}" ]; then \
		echo "deploy-migrate: DATABASE_URL is not set; set it to the production postgres:// URL (there is no default)"; \
		exit 1; \
	fi
	@$(call describe_database,Migrating)
	go run ./cmd/pgguard migrate -wait 60s

.PHONY: reset
reset: ## Drop, create and migrate DATABASE_URL; requires CONFIRM=yes
	@$(USE_DEV_DEFAULT) \
	if [ "$(CONFIRM)" != yes ]; then \
		$(call describe_database,reset would drop); \
		echo "Run make reset CONFIRM=yes to drop it."; \
		exit 1; \
	fi; \
	$(call describe_database,Dropping)
	$(USE_DEV_DEFAULT) $(DBMATE) --url "$$DATABASE_URL" drop
	$(USE_DEV_DEFAULT) $(DBMATE) --url "$$DATABASE_URL" create
	$(MAKE) migrate

.PHONY: status
status: ## Show applied and pending migrations of DATABASE_URL
	$(USE_DEV_DEFAULT) $(DBMATE) --url "$$DATABASE_URL" status

.PHONY: test
test: ## Run go vet, verify, all tests with the race detector, then fuzz
	go vet ./...
	$(MAKE) verify
	go test -race -count=1 ./...
	$(MAKE) fuzz

# Budget of each fuzz target of make fuzz, in go test's -fuzztime syntax.
# A count, not a duration: with a duration, the fuzzing of Go 1.26 can
# fail a target with "context deadline exceeded" when the time runs out,
# with no failing input. 60000 inputs took 2 to 4 s per target here.
FUZZTIME := 60000x

.PHONY: fuzz
fuzz: ## Fuzz every Fuzz function in the repository for FUZZTIME (60000 inputs) each
	@grep -rl --include='*_test.go' '^func Fuzz' . | sort | while read -r file; do \
		dir="./$$(dirname "$${file#./}")"; \
		for name in $$(sed -n 's/^func \(Fuzz[A-Za-z0-9_]*\)(.*/\1/p' "$$file"); do \
			echo "go test -run='^$$' -fuzz='^$$name\$$' -fuzztime=$(FUZZTIME) $$dir"; \
			go test -run='^$$' -fuzz="^$$name\$$" -fuzztime=$(FUZZTIME) "$$dir" || exit 1; \
		done; \
	done

# File that make bench writes its results to, as JSON.
BENCH_JSON := bench.json

.PHONY: bench
bench: ## Benchmark pgguard against the round-trip floor, the usual design and Redis; writes bench.json
	go test -run '^$$' -bench . -benchmem -benchtime 200ms ./service
	go run ./cmd/pgguard-bench -json $(BENCH_JSON)

.PHONY: demo
demo: ## Run the demo scenario against a Postgres that pgfind finds; fails if the scenario fails
	go run ./cmd/pgguard-demo -scenario

.PHONY: run
run: ## Start the demo HTTP server for manual requests
	go run ./cmd/pgguard-demo
