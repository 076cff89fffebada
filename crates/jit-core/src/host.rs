//! Host ↔ device: reading tensors back as `f32`, building label tensors from integers and
//! quantising float images to 8 bits — the conversions every front end needs.

use burn::tensor::{Device, Int, Tensor, TensorData};

use crate::error::JitError;

/// A host tensor in PyTorch layout (f32, row-major).
#[derive(Debug, Clone, PartialEq)]
pub struct HostTensor {
    /// PyTorch shape.
    pub shape: Vec<usize>,
    /// Values, row-major.
    pub data: Vec<f32>,
}

/// A stored number format that decodes to `f32` (checkpoints and `.pth` files both hold these).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoredFloat {
    F32,
    F64,
    F16,
    BF16,
    I64,
    I32,
}

impl StoredFloat {
    /// Bytes per value.
    pub fn size(self) -> usize {
        match self {
            Self::F64 | Self::I64 => 8,
            Self::F32 | Self::I32 => 4,
            Self::F16 | Self::BF16 => 2,
        }
    }

    /// Little-endian `bytes` → `f32` values; `None` when the length is not a whole number of
    /// values.
    pub fn decode(self, bytes: &[u8]) -> Option<Vec<f32>> {
        if bytes.len() % self.size() != 0 {
            return None;
        }
        let n = self.size();
        let it = bytes.chunks_exact(n);
        Some(match self {
            Self::F32 => it.map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect(),
            Self::F64 => it.map(|c| f64::from_le_bytes(c.try_into().expect("8 bytes")) as f32).collect(),
            Self::F16 => it.map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32()).collect(),
            Self::BF16 => it.map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32()).collect(),
            Self::I64 => it.map(|c| i64::from_le_bytes(c.try_into().expect("8 bytes")) as f32).collect(),
            Self::I32 => it.map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]) as f32).collect(),
        })
    }
}

/// Reads `tensor` back to the host as row-major `f32` values, whatever its float dtype
/// (synchronous: native only; the browser uses `into_data_async`).
pub fn read_f32<const D: usize>(tensor: Tensor<D>) -> Result<Vec<f32>, JitError> {
    data_to_f32(tensor.into_data())
}

/// Converts read-back tensor data (any float dtype) to `f32` values.
pub fn data_to_f32(data: TensorData) -> Result<Vec<f32>, JitError> {
    data.convert::<f32>().try_into_vec::<f32>().map_err(|e| JitError::Backend(format!("{e:?}")))
}

/// The `[B]` label tensor from host class indices.
pub fn labels(labels: &[i64], device: &Device) -> Tensor<1, Int> {
    Tensor::from_data(TensorData::new(labels.to_vec(), [labels.len()]), device)
}

/// Float image values in [-1, 1] → 8-bit: `round(clip((x + 1)/2 · 255))`, as the reference
/// saves its samples.
pub fn quantize_u8(x: &[f32]) -> Vec<u8> {
    x.iter().map(|v| (((v + 1.0) / 2.0) * 255.0).clamp(0.0, 255.0).round() as u8).collect()
}
