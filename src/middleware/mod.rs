//! A `tower` layer that rate-limits HTTP requests per key with a [`KeyedLimiter`]: usable
//! from axum (`Router::layer`), hyper (through `tower`'s service adapters) and any other
//! `tower` stack.
//!
//! Each request is keyed by a function of the request (an API-key header, the peer's IP, the
//! route; [`header_key`] and [`path_key`] are ready-made), costed by another (the tokens the
//! request is expected to use: from a header, an extension an earlier layer or extractor put
//! there after reading the body, or a constant), and admitted on that key's budgets, or
//! answered `429 Too Many Requests` without reaching the service. A response can carry the
//! actual usage ([`ActualCost`] in its extensions): the permit is then settled with it, the
//! surplus refunded, a shortfall charged.
//!
//! Denials carry `Retry-After` (whole seconds, rounded up) and the IETF `RateLimit` /
//! `RateLimit-Policy` fields (draft-ietf-httpapi-ratelimit-headers: one policy per budget,
//! named after it, `q` its limit and `w` its window in seconds; `r` what remains and `t` the
//! seconds until it does), on admitted responses too unless turned off; optionally the
//! `x-ratelimit-*` headers LLM providers send (`x-ratelimit-limit-requests`,
//! `x-ratelimit-remaining-tokens`, `x-ratelimit-reset-requests`, ...), which LLM clients and
//! this crate's own header learning already read.
//!
//! [`KeyedLimiter`]: crate::KeyedLimiter

mod fields;
mod layer;

pub use layer::{header_key, path_key, ActualCost, RateLimit, RateLimitLayer};
