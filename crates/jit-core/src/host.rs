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
        if !bytes.len().is_multiple_of(self.size()) {
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

/// Float images `[B, C, H, W]` in [-1, 1] → 8-bit RGB, `B·H·W·3` bytes: 1 channel is grey, 2
/// are grey + alpha, 3 are RGB, 4 are RGBA; alpha is composited over white.
pub fn to_rgb8(x: &[f32], channels: usize, size: usize) -> Vec<u8> {
    let c = channels.max(1);
    let plane = size * size;
    let count = x.len() / (c * plane).max(1);
    let px = quantize_u8(&x[..count * c * plane]);
    let mut out = Vec::with_capacity(count * plane * 3);
    for b in 0..count {
        let at = |ch: usize, i: usize| px[(b * c + ch) * plane + i] as u32;
        for i in 0..plane {
            let (rgb, alpha) = match c {
                1 => ([at(0, i); 3], None),
                2 => ([at(0, i); 3], Some(at(1, i))),
                3 => ([at(0, i), at(1, i), at(2, i)], None),
                _ => ([at(0, i), at(1, i), at(2, i)], Some(at(3, i))),
            };
            out.extend(rgb.map(|v| match alpha {
                None => v as u8,
                Some(a) => ((v * a + 255 * (255 - a)) / 255) as u8,
            }));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_channel_count_becomes_rgb() {
        // one 1×1 image per channel count: value 1.0 (255) in every channel, alpha 0 where present
        for (c, want) in [(1, [255, 255, 255]), (2, [255, 255, 255]), (3, [255, 255, 255]), (4, [255, 255, 255])] {
            let mut x = vec![1.0f32; c];
            if c == 2 || c == 4 {
                x[c - 1] = -1.0; // transparent → white
            }
            assert_eq!(to_rgb8(&x, c, 1), want);
        }
        // opaque black RGBA stays black; grey+alpha half transparent blends towards white
        assert_eq!(to_rgb8(&[-1.0, -1.0, -1.0, 1.0], 4, 1), [0, 0, 0]);
        assert_eq!(to_rgb8(&[-1.0, 0.0], 2, 1), [127, 127, 127]);
        assert_eq!(quantize_u8(&[-2.0, -1.0, 0.0, 1.0, 3.0]), [0, 0, 128, 255, 255]);
    }
}
