//! Reading official PyTorch checkpoints safely: a capped, data-only pickle reader and the
//! conversion of a `checkpoint-last.pth` into a JiT network.

pub mod convert;
pub mod pickle;
