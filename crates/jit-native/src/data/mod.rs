//! Training data: the built-in procedural shapes, MNIST-style IDX files and image folders, all
//! as `[-1, 1]` float images at the model size, plus a prefetching batch loader.

pub mod folder;
pub mod idx;
pub mod loader;
pub mod shapes;

use std::path::PathBuf;

use anyhow::Result;
use jit_core::rng::PortableRng;

/// One training image: `pixels` is `[C, H, W]` row-major in [-1, 1].
pub struct Sample {
    pub pixels: Vec<f32>,
    pub label: usize,
}

/// What every dataset's images are: their side, channels and classes.
#[derive(Debug, Clone)]
pub struct Layout {
    /// Image side in pixels.
    pub size: usize,
    /// Image channels C.
    pub channels: usize,
    /// One name per class.
    pub names: Vec<String>,
}

/// A labelled image dataset at a fixed size.
pub trait Dataset: Send + Sync {
    /// Number of images in one epoch.
    fn len(&self) -> usize;
    /// The images' size, channels and classes.
    fn layout(&self) -> &Layout;
    /// Image `index`; `rng` drives augmentation (random flips).
    fn get(&self, index: usize, rng: &mut PortableRng) -> Result<Sample>;

    /// Image channels C.
    fn channels(&self) -> usize {
        self.layout().channels
    }
    /// Image side in pixels.
    fn size(&self) -> usize {
        self.layout().size
    }
    /// One name per class.
    fn class_names(&self) -> &[String] {
        &self.layout().names
    }
}

/// Which dataset to train on; written as `shapes`, `idx:DIR` or `folder:DIR` on the command
/// line, in config files and in `settings.json`.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum DataSource {
    /// Procedural coloured shapes (no download).
    Shapes,
    /// MNIST/Fashion-MNIST IDX files in a directory.
    Idx { dir: PathBuf },
    /// One subfolder of images per class.
    Folder { dir: PathBuf },
}

impl std::str::FromStr for DataSource {
    type Err = anyhow::Error;
    /// `shapes`, `idx:DIR` (also `mnist:DIR`, `fashion-mnist[:DIR]`) or `folder:DIR`.
    fn from_str(s: &str) -> Result<Self> {
        let (kind, path) = s.split_once(':').unwrap_or((s, ""));
        Ok(match kind {
            "shapes" => Self::Shapes,
            "fashion-mnist" | "fashion_mnist" if path.is_empty() => {
                Self::Idx { dir: PathBuf::from(idx::FASHION_MNIST_DIR) }
            }
            "idx" | "mnist" | "fashion-mnist" | "fashion_mnist" if !path.is_empty() => Self::Idx { dir: path.into() },
            "folder" if !path.is_empty() => Self::Folder { dir: path.into() },
            _ => anyhow::bail!(
                "unknown dataset '{s}': use shapes, fashion-mnist, idx:DIR (MNIST-style IDX files) or folder:DIR (one subfolder per class)"
            ),
        })
    }
}

impl std::fmt::Display for DataSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Shapes => write!(f, "shapes"),
            Self::Idx { dir } => write!(f, "idx:{}", dir.display()),
            Self::Folder { dir } => write!(f, "folder:{}", dir.display()),
        }
    }
}

impl TryFrom<String> for DataSource {
    type Error = anyhow::Error;
    fn try_from(s: String) -> Result<Self> {
        s.parse()
    }
}

impl From<DataSource> for String {
    fn from(d: DataSource) -> String {
        d.to_string()
    }
}

impl DataSource {
    /// Opens the dataset at `size` pixels with `channels` channels (0: the dataset's own).
    pub fn open(&self, size: usize, channels: usize, flip: bool) -> Result<Box<dyn Dataset>> {
        Ok(match self {
            Self::Shapes => Box::new(shapes::Shapes::new(size, if channels == 0 { 3 } else { channels })?),
            Self::Idx { dir } => {
                Box::new(idx::IdxDataset::open(dir, "train", size, if channels == 0 { 1 } else { channels })?)
            }
            Self::Folder { dir } => {
                Box::new(folder::ImageFolder::open(dir, size, if channels == 0 { 3 } else { channels }, flip)?)
            }
        })
    }

    /// The channel count the dataset produces when not forced.
    pub fn natural_channels(&self) -> usize {
        match self {
            Self::Idx { .. } => 1,
            _ => 3,
        }
    }
}
