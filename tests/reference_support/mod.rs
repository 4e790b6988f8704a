//! The reference model's parts: exact GCRA per budget (`exact`), the driver that runs the real
//! limiter beside it (`driver`), and the independent window checks (`bounds`).

pub mod bounds;
pub mod driver;
pub mod exact;
