//! Loom models of ratekeeper live in `tests/`; run them with `RUSTFLAGS="--cfg loom" cargo test -p loom-tests --release`.
