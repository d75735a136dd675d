#!/usr/bin/env bash
# The whole towerscope test suite: lints, docs, unit and integration tests, including the
# tests that need real services (Prometheus, promtool, PostgreSQL), which this script installs.
# The PostgreSQL tests start a private server themselves (initdb into a temp dir, pg_ctl on a
# free loopback port); the system's clusters are not touched.
set -euo pipefail
cd "$(dirname "$0")/.."

need_pkgs=()
command -v promtool >/dev/null 2>&1 || need_pkgs+=(prometheus)
command -v prometheus >/dev/null 2>&1 || need_pkgs+=(prometheus)
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need_pkgs+=(postgresql)

if [ ${#need_pkgs[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "test.sh: installing ${need_pkgs[*]} (Debian packages)"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need_pkgs[@]}" >/dev/null
  else
    echo "test.sh: missing ${need_pkgs[*]}: install the Debian package(s) (apt-get install ${need_pkgs[*]}) or run as root" >&2
    exit 1
  fi
fi

rustup component list --installed 2>/dev/null | grep -q '^rustfmt' || rustup component add rustfmt clippy >/dev/null 2>&1 || true

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy (all features, and the default ones: code only some features use must not warn in the others)"
cargo clippy --all-targets --all-features -- -D warnings
cargo clippy --all-targets -- -D warnings
echo "== cargo doc"
RUSTDOCFLAGS="-D warnings" cargo doc --no-deps --all-features
# As docs.rs builds them (nightly with `--cfg docsrs`, the features of Cargo.toml's
# [package.metadata.docs.rs]): the crate's nightly-only `doc_cfg` switched on for it alone.
docsrs_features=$(sed -n '/^\[package.metadata.docs.rs\]/,/^\[/s/^features = \[\(.*\)\]/\1/p' Cargo.toml | tr -d '" ')
RUSTC_BOOTSTRAP=towerscope RUSTDOCFLAGS="--cfg docsrs -D warnings" cargo doc --no-deps --features "$docsrs_features"
# Without the default features: the links to their items stay text, nothing else may warn.
RUSTDOCFLAGS="-D warnings" cargo doc --no-deps --no-default-features
echo "== cargo test (all features, including the tests that need real services)"
cargo test --all-features -- --include-ignored
echo "== cargo test (no default features: the crate builds and its unit tests pass without axum)"
cargo clippy --no-default-features --all-targets -- -D warnings
cargo test --no-default-features --lib
echo "== cargo check, each optional integration on its own (and with axum): every feature set builds, its tests too"
for features in axum hyper log otel axum,log axum,otel otlp-tls tls health,tls prometheus health sqlx resources postgres reqwest; do
  echo "-- --features $features"
  cargo check --no-default-features --features "$features" --all-targets
done
echo "== cargo check of the load benchmark's peer stacks (benches/peers, a crate of its own), so that scripts/bench.sh peers/... keeps building"
cargo check --locked --manifest-path benches/peers/Cargo.toml
