//! The built-in dataset: coloured shapes on dark backgrounds, the class being the shape. Each
//! image is generated from its index, so the set needs no download and no memory.

use anyhow::{Result, bail};
use jit_core::rng::PortableRng;

use super::{Dataset, Layout, Sample};

const NAMES: [&str; 6] = ["circle", "square", "triangle", "ring", "cross", "diamond"];
/// Images per epoch.
const LEN: usize = 60_000;

/// Procedural shapes at `size × size`.
pub struct Shapes {
    layout: Layout,
}

impl Shapes {
    /// Shapes rendered at `size` pixels with 1 or 3 channels.
    pub fn new(size: usize, channels: usize) -> Result<Self> {
        if size < 8 {
            bail!("the shapes dataset needs images of at least 8 pixels (got {size})");
        }
        if channels != 1 && channels != 3 {
            bail!("the shapes dataset makes 1- or 3-channel images (got {channels})");
        }
        Ok(Self { layout: Layout { size, channels, names: NAMES.iter().map(|s| s.to_string()).collect() } })
    }
}

/// Whether point (x, y) relative to the centre, in units of the shape radius, is inside.
fn inside(class: usize, x: f32, y: f32) -> bool {
    match class {
        0 => x * x + y * y <= 1.0,
        1 => x.abs() <= 0.8 && y.abs() <= 0.8,
        2 => y <= 0.7 && y >= -0.9 + 1.6 * x.abs() * 1.15,
        3 => {
            let r2 = x * x + y * y;
            (0.45..=1.0).contains(&r2)
        }
        4 => (x.abs() <= 0.28 && y.abs() <= 0.95) || (y.abs() <= 0.28 && x.abs() <= 0.95),
        _ => x.abs() + y.abs() <= 1.0,
    }
}

fn hue_to_rgb(h: f32, s: f32, v: f32) -> [f32; 3] {
    let i = (h * 6.0).floor();
    let f = h * 6.0 - i;
    let (p, q, t) = (v * (1.0 - s), v * (1.0 - f * s), v * (1.0 - (1.0 - f) * s));
    match i as i32 % 6 {
        0 => [v, t, p],
        1 => [q, v, p],
        2 => [p, v, t],
        3 => [p, q, v],
        4 => [t, p, v],
        _ => [v, p, q],
    }
}

impl Dataset for Shapes {
    fn len(&self) -> usize {
        LEN
    }
    fn layout(&self) -> &Layout {
        &self.layout
    }
    fn get(&self, index: usize, _rng: &mut PortableRng) -> Result<Sample> {
        let mut r = PortableRng::new(0x5EED_0000_0000 ^ index as u64);
        let class = index % NAMES.len();
        let n = self.layout.size as f32;
        let radius = n * (0.22 + 0.16 * r.uniform() as f32);
        let cx = n / 2.0 + (r.uniform() as f32 - 0.5) * (n - 2.0 * radius).max(0.0);
        let cy = n / 2.0 + (r.uniform() as f32 - 0.5) * (n - 2.0 * radius).max(0.0);
        let fg = hue_to_rgb(r.uniform() as f32, 0.55 + 0.45 * r.uniform() as f32, 0.75 + 0.25 * r.uniform() as f32);
        let bg = hue_to_rgb(r.uniform() as f32, 0.5, 0.1 + 0.15 * r.uniform() as f32);
        let (cos, sin) = {
            let a = (r.uniform() as f32 - 0.5) * 0.5;
            (a.cos(), a.sin())
        };
        let s = self.layout.size;
        let mut pixels = vec![0f32; self.layout.channels * s * s];
        for py in 0..s {
            for px in 0..s {
                // 2×2 supersampling for smooth edges
                let mut cover = 0f32;
                for (ox, oy) in [(0.25, 0.25), (0.75, 0.25), (0.25, 0.75), (0.75, 0.75)] {
                    let (dx, dy) = ((px as f32 + ox - cx) / radius, (py as f32 + oy - cy) / radius);
                    let (x, y) = (cos * dx - sin * dy, sin * dx + cos * dy);
                    cover += inside(class, x, y) as u8 as f32 * 0.25;
                }
                let rgb: Vec<f32> = (0..3).map(|c| bg[c] + (fg[c] - bg[c]) * cover).collect();
                if self.layout.channels == 1 {
                    pixels[py * s + px] = (0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2]) * 2.0 - 1.0;
                } else {
                    for c in 0..3 {
                        pixels[c * s * s + py * s + px] = rgb[c] * 2.0 - 1.0;
                    }
                }
            }
        }
        Ok(Sample { pixels, label: class })
    }
}
