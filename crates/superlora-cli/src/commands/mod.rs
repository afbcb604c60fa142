//! One file per verb.

pub mod bench;
pub mod device_check;
pub mod diffusion;
pub mod eval;
pub mod export;
pub mod generate;
pub mod import;
pub mod merge;
pub mod merge_llama;
pub mod plan;
pub mod plot;
pub mod predict;
pub mod sweep;
pub mod train;
pub mod train_lm;
pub mod train_lm_classify;
