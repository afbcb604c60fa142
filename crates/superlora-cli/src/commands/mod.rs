//! One file per verb.

pub mod bench;
pub mod eval;
pub mod export;
pub mod import;
pub mod merge;
pub mod plan;
pub mod predict;
pub mod train;
