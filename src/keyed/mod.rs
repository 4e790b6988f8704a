//! The keyed limiter: budgets per key for millions of keys (tenants, API keys, IPs), each
//! key only its state words.
//!
//! `class` holds the limits a class of keys shares (a parameter block per budget, the same
//! slots a single bucket has), `tenant` one key's words and the gate that makes dropping an
//! idle key safe, `store` the lock-free map, `limiter` the public [`KeyedLimiter`].

mod class;
mod limiter;
mod store;
mod tenant;

pub use limiter::{KeyedBuilder, KeyedLimiter, KeyedPermit};
