# vaultgate: the two set-up commands are `make dev` and `make test`; both install what is missing
# (into the git-ignored .tools/) first. `make bench` runs the Transit benchmark.
SHELL := /bin/bash
export PATH := $(CURDIR)/.tools/bin:$(HOME)/.cargo/bin:$(PATH)
export VAULTGATE_BAO := $(CURDIR)/.tools/bin/bao

.PHONY: tools dev test lint alerts unit it bench fuzz

tools:
	@bash scripts/tools.sh

# Runs the gateway on its embedded default: local OpenBao + PostgreSQL, two demo callers.
dev: tools
	cargo run --bin vaultgate -- dev --dir .dev --metrics-listen 127.0.0.1:9464

# cargo deny (deny.toml): licenses, banned crates and sources. Not `advisories`: that needs the
# RustSec database from the network, which this machine cannot reach (docs/contributing.md).
# The fuzz crate (fuzz/) is built by `make fuzz`; a unit test holds it to src/fuzzing.rs's targets.
lint:
	cargo fmt --check
	cargo clippy --all-targets -- -D warnings
	cargo deny --log-level error check bans licenses sources

# Alerting rules (promtool check + unit tests) and the dashboard's queries; seconds, no server.
alerts: tools
	bash scripts/check-alerts.sh

# Every test: lint, unit tests, the integration binary against real OpenBao and PostgreSQL.
test: tools lint alerts
	cargo test --lib --bins --tests
	@# The integration tests built target/debug/vaultgate (CARGO_BIN_EXE); a separate
	@# `cargo build --bin` would rebuild tokio's dependents without the dev-dependency features.
	@test target/debug/vaultgate -nt src/main.rs
	bash scripts/check-ecosystem.sh
	bash scripts/check-codegen.sh
	bash scripts/check-deploy.sh

bench: tools
	bash scripts/bench.sh

# Fuzzes every parser that sees caller or Vault input, FUZZ_SECONDS per target (cargo-fuzz on
# stable via RUSTC_BOOTSTRAP; installs cargo-fuzz into .tools/cargo). Replays fuzz/regressions first.
FUZZ_SECONDS ?= 60
fuzz: tools
	bash scripts/fuzz.sh $(FUZZ_SECONDS)
