//! An image folder with one subfolder per class (like torchvision's `ImageFolder`): images are
//! centre-cropped to a square, resized to the model size and randomly flipped horizontally.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use image::imageops::FilterType;
use jit_core::rng::PortableRng;

use super::{Dataset, Sample};

const EXTENSIONS: [&str; 4] = ["png", "jpg", "jpeg", "bmp"];

/// Paths and labels; images are decoded on demand (on the loader thread).
pub struct ImageFolder {
    size: usize,
    channels: usize,
    flip: bool,
    items: Vec<(PathBuf, usize)>,
    names: Vec<String>,
}

impl ImageFolder {
    /// Scans `dir/<class>/*.{png,jpg,jpeg,bmp}`.
    pub fn open(dir: &Path, size: usize, channels: usize, flip: bool) -> Result<Self> {
        if !dir.is_dir() {
            bail!("image folder {} does not exist", dir.display());
        }
        if channels != 1 && channels != 3 {
            bail!("image folders load 1- or 3-channel images (got {channels})");
        }
        let mut classes: Vec<PathBuf> = std::fs::read_dir(dir)
            .with_context(|| format!("cannot list {}", dir.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.is_dir())
            .collect();
        classes.sort();
        let mut items = Vec::new();
        let mut names = Vec::new();
        for class_dir in &classes {
            let mut files: Vec<PathBuf> = std::fs::read_dir(class_dir)?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| {
                    p.extension()
                        .and_then(|e| e.to_str())
                        .is_some_and(|e| EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
                })
                .collect();
            if files.is_empty() {
                continue;
            }
            files.sort();
            let label = names.len();
            names.push(class_dir.file_name().unwrap().to_string_lossy().to_string());
            items.extend(files.into_iter().map(|f| (f, label)));
        }
        if items.is_empty() {
            bail!(
                "image folder {} has no images: expected one subfolder per class holding .png/.jpg/.bmp files",
                dir.display()
            );
        }
        Ok(Self { size, channels, flip, items, names })
    }
}

impl Dataset for ImageFolder {
    fn len(&self) -> usize {
        self.items.len()
    }
    fn channels(&self) -> usize {
        self.channels
    }
    fn size(&self) -> usize {
        self.size
    }
    fn class_names(&self) -> &[String] {
        &self.names
    }
    fn get(&self, index: usize, rng: &mut PortableRng) -> Result<Sample> {
        let (path, label) = &self.items[index];
        let img = image::open(path).with_context(|| format!("cannot decode image {}", path.display()))?;
        let (w, h) = (img.width(), img.height());
        let side = w.min(h);
        let img = img
            .crop_imm((w - side) / 2, (h - side) / 2, side, side)
            .resize_exact(self.size as u32, self.size as u32, FilterType::CatmullRom);
        let img = if self.flip && rng.uniform() < 0.5 { img.fliph() } else { img };
        let s = self.size;
        let mut pixels = vec![0f32; self.channels * s * s];
        if self.channels == 1 {
            for (o, p) in pixels.iter_mut().zip(img.to_luma8().pixels()) {
                *o = p.0[0] as f32 / 127.5 - 1.0;
            }
        } else {
            // Transparent pixels (e.g. emoji PNGs) are composited over white.
            let rgba = img.to_rgba8();
            for (i, p) in rgba.pixels().enumerate() {
                let a = p.0[3] as f32 / 255.0;
                for c in 0..3 {
                    let v = p.0[c] as f32 * a + 255.0 * (1.0 - a);
                    pixels[c * s * s + i] = v / 127.5 - 1.0;
                }
            }
        }
        Ok(Sample { pixels, label: *label })
    }
}
