//! An image folder with one subfolder per class (like torchvision's `ImageFolder`): images are
//! centre-cropped to a square, resized to the model size and randomly flipped horizontally.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use anyhow::{Context, Result, bail};
use image::imageops::FilterType;
use jit_core::rng::PortableRng;

use super::{Dataset, Layout, Sample};

const EXTENSIONS: [&str; 4] = ["png", "jpg", "jpeg", "bmp"];

/// Paths and labels; images are decoded on demand (on the loader thread).
pub struct ImageFolder {
    layout: Layout,
    flip: bool,
    items: Vec<(PathBuf, usize)>,
    /// Indices of images that failed to decode (each is warned about once and then skipped).
    bad: Mutex<HashSet<usize>>,
}

impl ImageFolder {
    /// Scans `dir/<class>/*.{png,jpg,jpeg,bmp}`.
    pub fn open(dir: &Path, size: usize, channels: usize, flip: bool) -> Result<Self> {
        if dir.exists() && !dir.is_dir() {
            bail!("{} is a file, not an image folder (folder:DIR: one subfolder of images per class)", dir.display());
        }
        if !dir.is_dir() {
            bail!("image folder {} does not exist", dir.display());
        }
        if channels != 1 && channels != 3 {
            bail!(
                "image folders load 1-channel (grey) or 3-channel (RGB) images, not {channels}; use --channels 1 or 3"
            );
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
                    p.is_file()
                        && p.extension()
                            .and_then(|e| e.to_str())
                            .is_some_and(|e| EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
                })
                .collect();
            if files.is_empty() {
                continue;
            }
            files.sort();
            let label = names.len();
            names.push(jit_core::checkpoint::printable(&class_dir.file_name().unwrap_or_default().to_string_lossy()));
            items.extend(files.into_iter().map(|f| (f, label)));
        }
        if items.is_empty() {
            bail!(
                "image folder {} has no images: expected one subfolder per class holding .png/.jpg/.bmp files",
                dir.display()
            );
        }
        Ok(Self { layout: Layout { size, channels, names }, flip, items, bad: Mutex::new(HashSet::new()) })
    }
}

impl Dataset for ImageFolder {
    fn len(&self) -> usize {
        self.items.len()
    }
    fn layout(&self) -> &Layout {
        &self.layout
    }
    /// Image `index`; an image that cannot be decoded is skipped with a warning (once per
    /// file) and the next readable one is used instead, so one bad file does not stop a run.
    fn get(&self, index: usize, rng: &mut PortableRng) -> Result<Sample> {
        let n = self.items.len();
        for k in 0..n {
            let i = (index + k) % n;
            if self.bad.lock().is_ok_and(|bad| bad.contains(&i)) {
                continue;
            }
            match self.decode(i, rng) {
                Ok(sample) => return Ok(sample),
                Err(e) => {
                    let mut bad = self.bad.lock().map_err(|_| anyhow::anyhow!("image loader poisoned"))?;
                    bad.insert(i);
                    eprintln!("warning: skipping {e:#} ({} of {n} images unreadable so far)", bad.len());
                }
            }
        }
        bail!("none of the {n} images in the folder could be decoded")
    }
}

impl ImageFolder {
    fn decode(&self, index: usize, rng: &mut PortableRng) -> Result<Sample> {
        let (path, label) = &self.items[index];
        // Only regular files: a FIFO named like an image would block the loader forever.
        let (file, _) = crate::fsutil::open_regular(path)?;
        let img = image::ImageReader::new(std::io::BufReader::new(file))
            .with_guessed_format()
            .and_then(|r| r.decode().map_err(std::io::Error::other))
            .with_context(|| format!("unreadable image {}", path.display()))?;
        let (w, h) = (img.width(), img.height());
        let side = w.min(h);
        let s = self.layout.size;
        // The centre square, resized without copying it out first.
        let square = image::imageops::crop_imm(&img, (w - side) / 2, (h - side) / 2, side, side);
        let flip = self.flip && rng.uniform() < 0.5;
        // Output column of input column x (the flip is folded into the write).
        let col = |x: usize| if flip { s - 1 - x } else { x };
        let mut pixels = vec![0f32; self.layout.channels * s * s];
        if self.layout.channels == 1 {
            let gray = image::DynamicImage::ImageRgba8(image::imageops::resize(
                &*square,
                s as u32,
                s as u32,
                FilterType::CatmullRom,
            ));
            for (i, p) in gray.to_luma8().pixels().enumerate() {
                pixels[(i / s) * s + col(i % s)] = p.0[0] as f32 / 127.5 - 1.0;
            }
        } else if let image::DynamicImage::ImageRgb8(rgb) = &img {
            // No alpha channel (JPEGs): straight from the decoded bytes, through a SIMD resize.
            let small = resize_rgb(rgb, ((w - side) / 2, (h - side) / 2, side), s as u32)?;
            for (i, p) in small.chunks_exact(3).enumerate() {
                let at = (i / s) * s + col(i % s);
                for c in 0..3 {
                    pixels[c * s * s + at] = p[c] as f32 / 127.5 - 1.0;
                }
            }
        } else {
            // Transparent pixels (e.g. emoji PNGs) are composited over white.
            let rgba = image::imageops::resize(&*square, s as u32, s as u32, FilterType::CatmullRom);
            for (i, p) in rgba.pixels().enumerate() {
                let at = (i / s) * s + col(i % s);
                let a = p.0[3] as f32 / 255.0;
                for c in 0..3 {
                    let v = p.0[c] as f32 * a + 255.0 * (1.0 - a);
                    pixels[c * s * s + at] = v / 127.5 - 1.0;
                }
            }
        }
        Ok(Sample { pixels, label: *label })
    }
}

/// The square `(left, top, side)` of `rgb` resized to `size`² (Catmull-Rom), as RGB bytes.
fn resize_rgb(rgb: &image::RgbImage, (left, top, side): (u32, u32, u32), size: u32) -> Result<Vec<u8>> {
    use fast_image_resize as fir;
    let src = fir::images::ImageRef::new(rgb.width(), rgb.height(), rgb.as_raw(), fir::PixelType::U8x3)?;
    let mut dst = fir::images::Image::new(size, size, fir::PixelType::U8x3);
    let options = fir::ResizeOptions::new().resize_alg(fir::ResizeAlg::Convolution(fir::FilterType::CatmullRom)).crop(
        left as f64,
        top as f64,
        side as f64,
        side as f64,
    );
    fir::Resizer::new().resize(&src, &mut dst, &options)?;
    Ok(dst.into_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A JPEG-shaped RGB picture: smooth colours, 50×30, so the centre square is 30×30.
    fn picture() -> image::RgbImage {
        image::RgbImage::from_fn(50, 30, |x, y| image::Rgb([(x * 5) as u8, (y * 8) as u8, ((x + y) * 3) as u8]))
    }

    #[test]
    fn rgb_images_are_cropped_resized_and_flipped_as_the_image_crate_does() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("a")).unwrap();
        picture().save(dir.path().join("a/0.png")).unwrap();
        let s = 16;
        // image's own Catmull-Rom resize of the centre square, the reference.
        let reference = image::imageops::resize(
            &*image::imageops::crop_imm(&picture(), 10, 0, 30, 30),
            16,
            16,
            FilterType::CatmullRom,
        );
        for flip in [false, true] {
            let data = ImageFolder::open(dir.path(), s, 3, flip).unwrap();
            // Draw until the coin says "flip" (or always "no flip" without flipping).
            let sample = (0..64)
                .map(|seed| (data.get(0, &mut PortableRng::new(seed)).unwrap(), PortableRng::new(seed).uniform() < 0.5))
                .find(|(_, heads)| *heads == flip)
                .unwrap()
                .0;
            let mut worst = 0.0f32;
            for (i, p) in reference.pixels().enumerate() {
                let (y, x) = (i / s, i % s);
                let at = y * s + if flip { s - 1 - x } else { x };
                for c in 0..3 {
                    let ours = (sample.pixels[c * s * s + at] + 1.0) * 127.5;
                    worst = worst.max((ours - p.0[c] as f32).abs());
                }
            }
            assert!(worst <= 2.0, "flip {flip}: largest difference {worst} of 255");
        }
    }
}
