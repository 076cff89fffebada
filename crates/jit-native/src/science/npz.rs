//! NumPy's `.npz` files (a zip of `.npy` arrays), as FID statistics (`mu`, `sigma`) and the ADM
//! evaluator's sample files (`arr_0`, uint8 NHWC) use them. Reading checks every size before
//! anything is allocated; writing is what `np.savez` writes (stored entries, `.npy` version 1.0
//! headers padded to 64 bytes, zip64 for entries over 4 GiB).

use std::collections::HashMap;
use std::io::{Read, Seek, Write};
use std::path::Path;

use anyhow::{Context, Result, bail};
use zip::write::SimpleFileOptions;

use crate::refuse;
use crate::regular::open_regular;

/// The values of an array, in C order.
#[derive(Debug, Clone, PartialEq)]
pub enum Values {
    U8(Vec<u8>),
    I64(Vec<i64>),
    F32(Vec<f32>),
    F64(Vec<f64>),
}

/// One array of a `.npz`.
#[derive(Debug, Clone, PartialEq)]
pub struct Array {
    pub shape: Vec<usize>,
    pub values: Values,
}

impl Array {
    /// The values as f64 (any float type).
    pub fn to_f64(&self) -> Option<Vec<f64>> {
        match &self.values {
            Values::F64(v) => Some(v.clone()),
            Values::F32(v) => Some(v.iter().map(|&x| x as f64).collect()),
            Values::U8(_) | Values::I64(_) => None,
        }
    }
}

/// The `.npy` type string of each kind (little-endian).
fn descr(values: &Values) -> &'static str {
    match values {
        Values::U8(_) => "|u1",
        Values::I64(_) => "<i8",
        Values::F32(_) => "<f4",
        Values::F64(_) => "<f8",
    }
}

/// The `.npy` header of an array: magic, version 1.0, the dict, padded with spaces to a
/// multiple of 64 bytes and ended by a newline.
fn npy_header(descr: &str, shape: &[usize]) -> Vec<u8> {
    let dims = match shape {
        [one] => format!("({one},)"),
        _ => format!("({})", shape.iter().map(|d| d.to_string()).collect::<Vec<_>>().join(", ")),
    };
    let mut dict = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {dims}, }}");
    let unpadded = 10 + dict.len() + 1;
    dict.push_str(&" ".repeat(unpadded.next_multiple_of(64) - unpadded));
    dict.push('\n');
    let mut out = b"\x93NUMPY\x01\x00".to_vec();
    out.extend_from_slice(&(dict.len() as u16).to_le_bytes());
    out.extend_from_slice(dict.as_bytes());
    out
}

/// Writes `arrays` as a `.npz` to `out` (each as `NAME.npy`).
pub fn write<W: Write + Seek>(out: W, arrays: &[(&str, &Array)]) -> Result<W> {
    let mut zip = zip::ZipWriter::new(out);
    let options = SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored).large_file(true);
    for (name, array) in arrays {
        zip.start_file(format!("{name}.npy"), options).context("cannot write the .npz")?;
        zip.write_all(&npy_header(descr(&array.values), &array.shape))?;
        match &array.values {
            Values::U8(v) => zip.write_all(v)?,
            Values::I64(v) => v.iter().try_for_each(|x| zip.write_all(&x.to_le_bytes()))?,
            Values::F32(v) => v.iter().try_for_each(|x| zip.write_all(&x.to_le_bytes()))?,
            Values::F64(v) => v.iter().try_for_each(|x| zip.write_all(&x.to_le_bytes()))?,
        }
    }
    zip.finish().context("cannot write the .npz")
}

/// The arrays of the `.npz` at `path`; refused if any would hold more than `max_bytes`.
pub fn read(path: &Path, max_bytes: u64) -> Result<HashMap<String, Array>> {
    let (file, _) = open_regular(path)?;
    let mut zip = zip::ZipArchive::new(std::io::BufReader::new(file))
        .map_err(|e| crate::exit::refused(format!("{} is not a .npz file ({e})", path.display())))?;
    if zip.len() > 64 {
        refuse!("{} holds {} entries; not a .npz of statistics or samples", path.display(), zip.len());
    }
    let mut arrays = HashMap::new();
    for i in 0..zip.len() {
        let mut entry = zip.by_index(i).with_context(|| format!("cannot read {}", path.display()))?;
        let name = entry.name().context("bad entry name in the .npz")?.trim_end_matches(".npy").to_string();
        if entry.size() > max_bytes {
            refuse!("'{name}' in {} is {} bytes, over the {max_bytes} accepted", path.display(), entry.size());
        }
        let mut bytes = Vec::with_capacity(entry.size() as usize);
        (&mut entry).take(max_bytes).read_to_end(&mut bytes)?;
        let array = parse_npy(&bytes).with_context(|| format!("'{name}' in {}", path.display()))?;
        arrays.insert(name, array);
    }
    Ok(arrays)
}

/// One `.npy` array (little-endian u8, f32 or f64, C order, version 1–3 headers).
pub fn parse_npy(bytes: &[u8]) -> Result<Array> {
    if bytes.len() < 10 || &bytes[..6] != b"\x93NUMPY" {
        bail!("not a .npy array");
    }
    let (len, start) = match bytes[6] {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        2 | 3 if bytes.len() >= 12 => (u32::from_le_bytes(bytes[8..12].try_into().expect("4 bytes")) as usize, 12),
        v => bail!(".npy version {v} is not supported"),
    };
    let header = bytes.get(start..start + len).context("truncated .npy header")?;
    let header = std::str::from_utf8(header).context(".npy header is not text")?;
    let field = |key: &str| -> Result<&str> {
        let at = header.find(&format!("'{key}':")).with_context(|| format!(".npy header has no '{key}'"))?;
        Ok(header[at + key.len() + 3..].trim_start())
    };
    let kind = field("descr")?.trim_start_matches('\'').split('\'').next().unwrap_or_default().to_string();
    if field("fortran_order")?.starts_with("True") {
        bail!("Fortran-ordered arrays are not supported");
    }
    let shape_text = field("shape")?;
    let shape_text = shape_text.strip_prefix('(').and_then(|s| s.split(')').next()).context("bad .npy shape")?;
    let shape: Vec<usize> = shape_text
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.parse::<usize>().context("bad .npy shape"))
        .collect::<Result<_>>()?;
    let count = shape.iter().try_fold(1usize, |n, &d| n.checked_mul(d)).context(".npy shape overflows")?;
    let data = &bytes[start + len..];
    let width = match kind.as_str() {
        "|u1" | "<u1" => 1,
        "<f4" => 4,
        "<f8" | "<i8" => 8,
        other => bail!("arrays of type '{other}' are not supported (uint8, int64, float32 or float64)"),
    };
    if count.checked_mul(width) != Some(data.len()) {
        bail!("the .npy data holds {} bytes, its shape {shape:?} needs {}", data.len(), count.saturating_mul(width));
    }
    let eight = || data.chunks_exact(8).map(|b| <[u8; 8]>::try_from(b).expect("8 bytes"));
    let values = match kind.as_str() {
        "<f4" => Values::F32(data.chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().expect("4"))).collect()),
        "<f8" => Values::F64(eight().map(f64::from_le_bytes).collect()),
        "<i8" => Values::I64(eight().map(i64::from_le_bytes).collect()),
        _ => Values::U8(data.to_vec()),
    };
    Ok(Array { shape, values })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arrays_round_trip_with_the_header_numpy_writes() {
        let a = Array { shape: vec![2, 1, 1, 3], values: Values::U8(vec![1, 2, 3, 4, 5, 6]) };
        let b = Array { shape: vec![3], values: Values::F64(vec![0.5, -1.0, 3.25]) };
        let bytes = write(std::io::Cursor::new(Vec::new()), &[("arr_0", &a), ("mu", &b)]).unwrap().into_inner();
        // The header as np.save writes it, padded so the data starts at a multiple of 64.
        let header = npy_header("|u1", &[2, 1, 1, 3]);
        assert_eq!(header.len() % 64, 0);
        let text = String::from_utf8_lossy(&header[10..]);
        assert!(text.starts_with("{'descr': '|u1', 'fortran_order': False, 'shape': (2, 1, 1, 3), }"), "{text}");
        assert!(text.ends_with(" \n"));
        assert_eq!(npy_header("<f8", &[3]).len() % 64, 0);
        assert!(String::from_utf8_lossy(&npy_header("<f8", &[3])).contains("'shape': (3,)"));
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.npz");
        std::fs::write(&path, &bytes).unwrap();
        let back = read(&path, 1 << 20).unwrap();
        assert_eq!(back["arr_0"], a);
        assert_eq!(back["mu"], b);
        assert!(read(&path, 10).unwrap_err().to_string().contains("over the 10"));
    }

    #[test]
    fn malformed_arrays_are_refused() {
        let mut npy = npy_header("<f8", &[4]);
        npy.extend_from_slice(&[0u8; 24]);
        assert!(parse_npy(&npy).unwrap_err().to_string().contains("needs 32"));
        let mut npy = npy_header("<c8", &[1]);
        npy.extend_from_slice(&[0u8; 8]);
        assert!(parse_npy(&npy).unwrap_err().to_string().contains("not supported"));
        let npy = npy_header("<f4", &[usize::MAX, 4]);
        assert!(parse_npy(&npy).is_err());
        assert!(parse_npy(b"PK\x03\x04").is_err());
    }
}
