//! Helpers shared by the integration tests: one budget's figures from a [`Usage`], with the
//! conventions the tests compare against (an unlimited budget uses 0, has 0 as its limit and
//! `u64::MAX` remaining).
#![allow(dead_code)]

use ratekeeper::{Budget, Usage};

/// Units in use of the tightest budget of this kind (0 when unlimited).
pub fn used(u: &Usage, b: Budget) -> u64 {
    u.get(b).map_or(0, |x| x.used)
}

/// Units one call could take of the tightest budget of this kind (`u64::MAX` when unlimited).
pub fn remaining(u: &Usage, b: Budget) -> u64 {
    u.get(b).map_or(u64::MAX, |x| x.remaining)
}

/// The configured count of the tightest budget of this kind (0 when unlimited).
pub fn limit(u: &Usage, b: Budget) -> u64 {
    u.get(b).map_or(0, |x| x.limit)
}
