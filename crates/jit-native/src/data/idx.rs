//! MNIST-style IDX files (`train-images-idx3-ubyte[.gz]`, `train-labels-idx1-ubyte[.gz]`, and the
//! `t10k-` test split), e.g. Debian's `dataset-fashion-mnist`. Images are padded (or resized) to
//! the model size with the background value.

use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use image::{GrayImage, imageops::FilterType};
use jit_core::rng::PortableRng;

use super::{Dataset, Layout, Sample};

/// Where Debian's `dataset-fashion-mnist` installs the files.
pub const FASHION_MNIST_DIR: &str = "/usr/share/datasets/fashion-mnist";
const FASHION_NAMES: [&str; 10] =
    ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"];

/// Largest IDX file read (inflated), so a corrupt or hostile file cannot exhaust memory.
const MAX_IDX_BYTES: u64 = 1 << 30;
/// Largest image side in an IDX file.
const MAX_IDX_SIDE: usize = 4096;

/// An IDX image/label pair loaded in memory, converted to `[-1, 1]` at `size` pixels with
/// `channels` channels (1, or 3 with the grey value repeated).
pub struct IdxDataset {
    layout: Layout,
    images: Vec<Vec<f32>>,
    labels: Vec<usize>,
}

fn find(dir: &Path, stem: &str) -> Result<PathBuf> {
    for candidate in [dir.join(stem), dir.join(format!("{stem}.gz"))] {
        if candidate.is_file() {
            return Ok(candidate);
        }
    }
    let hint =
        if dir == Path::new(FASHION_MNIST_DIR) { " (install it: apt-get install dataset-fashion-mnist)" } else { "" };
    bail!("missing IDX file {stem}[.gz] in {}{hint}", dir.display())
}

fn read_all(path: &Path) -> Result<Vec<u8>> {
    let (file, _) = crate::fsutil::open_regular(path)?;
    let mut out = Vec::new();
    let read = if path.extension().is_some_and(|e| e == "gz") {
        flate2::read::GzDecoder::new(file).take(MAX_IDX_BYTES + 1).read_to_end(&mut out)
    } else {
        file.take(MAX_IDX_BYTES + 1).read_to_end(&mut out)
    };
    read.with_context(|| format!("{} is not a readable (gzip) IDX file", path.display()))?;
    if out.len() as u64 > MAX_IDX_BYTES {
        bail!(
            "{} holds more than {} MiB of data; not an IDX file this loader accepts",
            path.display(),
            MAX_IDX_BYTES >> 20
        );
    }
    Ok(out)
}

/// Parses an IDX buffer with unsigned-byte data: returns (dims, data).
pub fn parse_idx<'a>(bytes: &'a [u8], expect_dims: usize, what: &Path) -> Result<(Vec<usize>, &'a [u8])> {
    if bytes.len() < 4 || bytes[0] != 0 || bytes[1] != 0 || bytes[2] != 0x08 || bytes[3] as usize != expect_dims {
        bail!("{} is not an IDX file of unsigned bytes with {expect_dims} dimensions", what.display());
    }
    let header = 4 + 4 * expect_dims;
    if bytes.len() < header {
        bail!("{} is truncated (header)", what.display());
    }
    let dims: Vec<usize> = (0..expect_dims)
        .map(|i| u32::from_be_bytes(bytes[4 + 4 * i..8 + 4 * i].try_into().unwrap()) as usize)
        .collect();
    let n = dims.iter().try_fold(1usize, |n, &d| n.checked_mul(d));
    let Some(n) = n.filter(|&n| n <= bytes.len() - header) else {
        bail!("{} is truncated or corrupt: dimensions {dims:?} need more values than the file holds", what.display());
    };
    if bytes.len() < header + n {
        bail!("{} is truncated: header promises {n} values, file has {}", what.display(), bytes.len() - header);
    }
    Ok((dims, &bytes[header..header + n]))
}

impl IdxDataset {
    /// Loads split `train` or `t10k`/`test` from `dir` at `size` pixels with `channels` (1 or 3).
    pub fn open(dir: &Path, split: &str, size: usize, channels: usize) -> Result<Self> {
        if channels != 1 && channels != 3 {
            bail!("IDX images are grey: load them with 1 channel or 3 (grey repeated), not {channels}");
        }
        if !dir.is_dir() {
            let hint = if dir == Path::new(FASHION_MNIST_DIR) {
                " (install it: apt-get install dataset-fashion-mnist)"
            } else {
                ""
            };
            bail!("dataset directory {} does not exist{hint}", dir.display());
        }
        let prefix = if split == "train" { "train" } else { "t10k" };
        let img_path = find(dir, &format!("{prefix}-images-idx3-ubyte"))?;
        let lbl_path = find(dir, &format!("{prefix}-labels-idx1-ubyte"))?;
        let img_bytes = read_all(&img_path)?;
        let lbl_bytes = read_all(&lbl_path)?;
        let (dims, pixels) = parse_idx(&img_bytes, 3, &img_path)?;
        let (ldims, labels) = parse_idx(&lbl_bytes, 1, &lbl_path)?;
        let (n, h, w) = (dims[0], dims[1], dims[2]);
        if ldims[0] != n {
            bail!("{} has {} labels for {n} images in {}", lbl_path.display(), ldims[0], img_path.display());
        }
        if n == 0 {
            bail!("{} holds no images", img_path.display());
        }
        if h == 0 || w == 0 || h > MAX_IDX_SIDE || w > MAX_IDX_SIDE {
            bail!("{} has images of {h}×{w} pixels; sides must be 1..={MAX_IDX_SIDE}", img_path.display());
        }
        let images = pixels.chunks_exact(h * w).map(|img| place(img, h, w, size)).collect();
        let labels: Vec<usize> = labels.iter().map(|l| *l as usize).collect();
        let classes = labels.iter().max().unwrap() + 1;
        let fashion = dir.to_string_lossy().contains("fashion");
        let names = (0..classes)
            .map(|c| if fashion && classes == 10 { FASHION_NAMES[c].to_string() } else { c.to_string() })
            .collect();
        Ok(Self { layout: Layout { size, channels, names }, images, labels })
    }
}

/// Grey image `h × w` in bytes → `[-1, 1]` at `size`: centred with background padding when it
/// fits, else resized.
fn place(img: &[u8], h: usize, w: usize, size: usize) -> Vec<f32> {
    let mut out = vec![-1f32; size * size];
    if h <= size && w <= size {
        let (oy, ox) = ((size - h) / 2, (size - w) / 2);
        for y in 0..h {
            for x in 0..w {
                out[(y + oy) * size + x + ox] = img[y * w + x] as f32 / 127.5 - 1.0;
            }
        }
    } else {
        let g = GrayImage::from_raw(w as u32, h as u32, img.to_vec()).expect("sizes match");
        let r = image::imageops::resize(&g, size as u32, size as u32, FilterType::Triangle);
        for (o, p) in out.iter_mut().zip(r.pixels()) {
            *o = p.0[0] as f32 / 127.5 - 1.0;
        }
    }
    out
}

impl Dataset for IdxDataset {
    fn len(&self) -> usize {
        self.images.len()
    }
    fn layout(&self) -> &Layout {
        &self.layout
    }
    fn get(&self, index: usize, _rng: &mut PortableRng) -> Result<Sample> {
        let grey = &self.images[index];
        Ok(Sample { pixels: grey.repeat(self.layout.channels), label: self.labels[index] })
    }
}
