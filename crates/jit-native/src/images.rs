//! PNG output: single images and grids from `[B, C, H, W]` float batches in [-1, 1].

use std::path::Path;

use anyhow::{Context, Result};
use image::{ImageBuffer, Rgb, imageops::FilterType};
use jit_core::host::to_rgb8;

/// A batch of float images `[B, C, H, W]` in [-1, 1] held on the host.
pub struct HostImages<'a> {
    pub data: &'a [f32],
    pub count: usize,
    pub channels: usize,
    pub size: usize,
}

impl HostImages<'_> {
    /// Image `i` as 8-bit RGB (see [`to_rgb8`] for 1, 2 and 4 channels).
    pub fn rgb(&self, i: usize) -> ImageBuffer<Rgb<u8>, Vec<u8>> {
        let (c, s) = (self.channels.max(1), self.size);
        let rgb = to_rgb8(&self.data[i * c * s * s..(i + 1) * c * s * s], c, s);
        ImageBuffer::from_raw(s as u32, s as u32, rgb).expect("H·W·3 bytes")
    }

    /// Bytes of [`Self::grid`]'s image (RGB), computed without overflow, for the memory gate.
    pub fn grid_bytes(&self, cols: usize, scale: u32) -> u64 {
        let cols = cols.clamp(1, self.count.max(1)) as u64;
        let rows = self.count.div_ceil(cols as usize) as u64;
        let cell = (self.size as u64).saturating_mul(scale as u64).saturating_add(2);
        cols.saturating_mul(cell).saturating_mul(rows.saturating_mul(cell)).saturating_mul(3)
    }

    /// A grid of all images, `cols` wide, 2-pixel gaps, each upscaled ×`scale` (nearest).
    pub fn grid(&self, cols: usize, scale: u32) -> ImageBuffer<Rgb<u8>, Vec<u8>> {
        let cols = cols.clamp(1, self.count.max(1));
        let rows = self.count.div_ceil(cols);
        let cell = self.size as u32 * scale;
        let gap = 2;
        let mut out = ImageBuffer::from_pixel(
            cols as u32 * (cell + gap) + gap,
            rows as u32 * (cell + gap) + gap,
            Rgb([255u8, 255, 255]),
        );
        for i in 0..self.count {
            let img = image::imageops::resize(&self.rgb(i), cell, cell, FilterType::Nearest);
            let (x, y) = ((i % cols) as u32 * (cell + gap) + gap, (i / cols) as u32 * (cell + gap) + gap);
            image::imageops::replace(&mut out, &img, x as i64, y as i64);
        }
        out
    }
}

/// Writes an RGB image as PNG, atomically.
pub fn save_png(path: &Path, img: &ImageBuffer<Rgb<u8>, Vec<u8>>) -> Result<()> {
    let mut bytes = Vec::new();
    img.write_to(&mut std::io::Cursor::new(&mut bytes), image::ImageFormat::Png).context("PNG encoding failed")?;
    crate::fsutil::write_atomic(path, &bytes)
}
