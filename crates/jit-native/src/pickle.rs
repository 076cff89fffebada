//! A data-only pickle reader, enough to read the plain values of a PyTorch checkpoint
//! (`epoch`, the `args` Namespace). It interprets opcodes into values and never imports or calls
//! anything: classes are recorded by name, tensors by their persistent id.

use std::collections::HashMap;
use std::io::Read;
use std::path::Path;

use anyhow::{Context, Result, anyhow, bail};

/// A decoded pickle value.
#[derive(Clone, Debug, PartialEq)]
pub enum Py {
    None,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Bytes(Vec<u8>),
    List(Vec<Py>),
    Dict(Vec<(Py, Py)>),
    /// `module.name` of a global.
    Global(String),
    /// An instance of `class` with its constructor arguments and `__setstate__` state.
    Object { class: String, args: Box<Py>, state: Option<Box<Py>> },
    /// A persistent id (a tensor storage in torch files).
    Persistent(Box<Py>),
}

impl Py {
    /// `self[key]` for dicts with string keys, and attributes of objects whose state is a dict.
    pub fn get(&self, key: &str) -> Option<&Py> {
        match self {
            Py::Dict(kv) => kv.iter().find(|(k, _)| matches!(k, Py::Str(s) if s == key)).map(|(_, v)| v),
            Py::Object { state: Some(s), .. } => s.get(key),
            _ => None,
        }
    }
    pub fn as_str(&self) -> Option<&str> {
        if let Py::Str(s) = self { Some(s) } else { None }
    }
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Py::Float(f) => Some(*f),
            Py::Int(i) => Some(*i as f64),
            _ => None,
        }
    }
}

struct Reader<'a> {
    b: &'a [u8],
    p: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        let end = self.p.checked_add(n).ok_or_else(|| anyhow!("pickle length overflow"))?;
        let s = self.b.get(self.p..end).ok_or_else(|| anyhow!("truncated pickle"))?;
        self.p = end;
        Ok(s)
    }
    fn u8(&mut self) -> Result<u8> {
        Ok(self.take(1)?[0])
    }
    fn le<const N: usize>(&mut self) -> Result<[u8; N]> {
        Ok(self.take(N)?.try_into().unwrap())
    }
    fn line(&mut self) -> Result<String> {
        let rest = &self.b[self.p..];
        let n = rest.iter().position(|&c| c == b'\n').ok_or_else(|| anyhow!("truncated pickle"))?;
        self.p += n + 1;
        Ok(String::from_utf8_lossy(&rest[..n]).into_owned())
    }
    fn string(&mut self, n: usize) -> Result<Py> {
        Ok(Py::Str(String::from_utf8_lossy(self.take(n)?).into_owned()))
    }
}

fn long(b: &[u8]) -> Py {
    if b.len() > 8 {
        return Py::None;
    }
    let fill = if b.last().is_some_and(|x| x & 0x80 != 0) { 0xff } else { 0 };
    let mut v = [fill; 8];
    v[..b.len()].copy_from_slice(b);
    Py::Int(i64::from_le_bytes(v))
}

fn pairs(items: Vec<Py>) -> Result<Vec<(Py, Py)>> {
    if items.len() % 2 != 0 {
        bail!("odd number of dict items in pickle");
    }
    let mut it = items.into_iter();
    let mut out = Vec::new();
    while let (Some(k), Some(v)) = (it.next(), it.next()) {
        out.push((k, v));
    }
    Ok(out)
}

/// Decodes a pickle (protocols 2–5) into a [`Py`] tree.
pub fn unpickle(bytes: &[u8]) -> Result<Py> {
    let mut r = Reader { b: bytes, p: 0 };
    let mut st: Vec<Py> = Vec::new();
    let mut marks: Vec<usize> = Vec::new();
    let mut memo: HashMap<u32, Py> = HashMap::new();
    macro_rules! pop {
        () => {
            st.pop().ok_or_else(|| anyhow!("pickle stack underflow"))?
        };
    }
    macro_rules! pop_mark {
        () => {{
            let m = marks.pop().ok_or_else(|| anyhow!("pickle MARK missing"))?;
            if m > st.len() {
                bail!("bad pickle MARK");
            }
            st.split_off(m)
        }};
    }
    macro_rules! top {
        () => {
            st.last().cloned().ok_or_else(|| anyhow!("empty pickle stack"))?
        };
    }
    loop {
        let op = r.u8()?;
        match op {
            0x80 => {
                r.u8()?;
            }
            0x95 => {
                r.le::<8>()?;
            }
            b'.' => return Ok(pop!()),
            b'(' => marks.push(st.len()),
            b'N' => st.push(Py::None),
            0x88 => st.push(Py::Bool(true)),
            0x89 => st.push(Py::Bool(false)),
            b'J' => st.push(Py::Int(i32::from_le_bytes(r.le()?) as i64)),
            b'K' => st.push(Py::Int(r.u8()? as i64)),
            b'M' => st.push(Py::Int(u16::from_le_bytes(r.le()?) as i64)),
            0x8a => {
                let n = r.u8()? as usize;
                st.push(long(r.take(n)?))
            }
            0x8b => {
                let n = u32::from_le_bytes(r.le()?) as usize;
                st.push(long(r.take(n)?))
            }
            b'G' => st.push(Py::Float(f64::from_be_bytes(r.le()?))),
            b'X' => {
                let n = u32::from_le_bytes(r.le()?) as usize;
                st.push(r.string(n)?)
            }
            0x8c => {
                let n = r.u8()? as usize;
                st.push(r.string(n)?)
            }
            0x8d => {
                let n = u64::from_le_bytes(r.le()?) as usize;
                st.push(r.string(n)?)
            }
            b'B' => {
                let n = u32::from_le_bytes(r.le()?) as usize;
                st.push(Py::Bytes(r.take(n)?.to_vec()))
            }
            b'C' => {
                let n = r.u8()? as usize;
                st.push(Py::Bytes(r.take(n)?.to_vec()))
            }
            0x8e => {
                let n = u64::from_le_bytes(r.le()?) as usize;
                st.push(Py::Bytes(r.take(n)?.to_vec()))
            }
            b'}' => st.push(Py::Dict(Vec::new())),
            b']' | 0x8f => st.push(Py::List(Vec::new())),
            b')' => st.push(Py::List(Vec::new())),
            b'd' => {
                let items = pop_mark!();
                st.push(Py::Dict(pairs(items)?))
            }
            b'l' | b't' | 0x91 => {
                let items = pop_mark!();
                st.push(Py::List(items))
            }
            0x85 => {
                let a = pop!();
                st.push(Py::List(vec![a]))
            }
            0x86 => {
                let b = pop!();
                let a = pop!();
                st.push(Py::List(vec![a, b]))
            }
            0x87 => {
                let c = pop!();
                let b = pop!();
                let a = pop!();
                st.push(Py::List(vec![a, b, c]))
            }
            b's' => {
                let v = pop!();
                let k = pop!();
                match st.last_mut() {
                    Some(Py::Dict(d)) => d.push((k, v)),
                    _ => bail!("pickle SETITEM on a non-dict"),
                }
            }
            b'u' => {
                let items = pairs(pop_mark!())?;
                match st.last_mut() {
                    Some(Py::Dict(d)) => d.extend(items),
                    _ => bail!("pickle SETITEMS on a non-dict"),
                }
            }
            b'a' => {
                let v = pop!();
                match st.last_mut() {
                    Some(Py::List(l)) => l.push(v),
                    _ => bail!("pickle APPEND on a non-list"),
                }
            }
            b'e' | 0x90 => {
                let items = pop_mark!();
                match st.last_mut() {
                    Some(Py::List(l)) => l.extend(items),
                    _ => bail!("pickle APPENDS on a non-list"),
                }
            }
            b'q' => {
                let i = r.u8()? as u32;
                memo.insert(i, top!());
            }
            b'r' => {
                let i = u32::from_le_bytes(r.le()?);
                memo.insert(i, top!());
            }
            0x94 => {
                let i = memo.len() as u32;
                memo.insert(i, top!());
            }
            b'h' => {
                let i = r.u8()? as u32;
                st.push(memo.get(&i).cloned().ok_or_else(|| anyhow!("pickle memo {i} missing"))?)
            }
            b'j' => {
                let i = u32::from_le_bytes(r.le()?);
                st.push(memo.get(&i).cloned().ok_or_else(|| anyhow!("pickle memo {i} missing"))?)
            }
            b'c' => {
                let (m, n) = (r.line()?, r.line()?);
                st.push(Py::Global(format!("{m}.{n}")))
            }
            0x93 => {
                let n = pop!();
                let m = pop!();
                match (m, n) {
                    (Py::Str(m), Py::Str(n)) => st.push(Py::Global(format!("{m}.{n}"))),
                    _ => bail!("bad pickle STACK_GLOBAL"),
                }
            }
            b'R' | 0x81 => {
                let args = pop!();
                let class = match pop!() {
                    Py::Global(g) => g,
                    other => format!("{other:?}"),
                };
                // An OrderedDict is filled by SETITEMS afterwards: treat it as a dict.
                if class == "collections.OrderedDict" {
                    st.push(Py::Dict(Vec::new()))
                } else {
                    st.push(Py::Object { class, args: Box::new(args), state: None })
                }
            }
            b'b' => {
                let state = pop!();
                let obj = pop!();
                st.push(match (obj, state) {
                    (Py::Dict(mut d), Py::Dict(s)) => {
                        d.extend(s);
                        Py::Dict(d)
                    }
                    (Py::Object { class, args, .. }, s) => Py::Object { class, args, state: Some(Box::new(s)) },
                    (o, _) => o,
                })
            }
            b'Q' => {
                let pid = pop!();
                st.push(Py::Persistent(Box::new(pid)))
            }
            b'0' => {
                pop!();
            }
            b'1' => {
                let _ = pop_mark!();
            }
            b'2' => {
                let t = top!();
                st.push(t)
            }
            op => bail!("unsupported pickle opcode 0x{op:02x} at byte {}", r.p - 1),
        }
    }
}

/// Reads and decodes `data.pkl` of a torch.save zip file.
pub fn read_torch_zip(path: &Path) -> Result<Py> {
    let file = std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let mut zip = zip::ZipArchive::new(std::io::BufReader::new(file))
        .with_context(|| format!("{} is not a PyTorch zip checkpoint (truncated or another format)", path.display()))?;
    let name = (0..zip.len())
        .filter_map(|i| zip.by_index(i).ok().and_then(|f| f.name().ok().map(|n| n.to_string())))
        .filter(|n| n.ends_with("data.pkl"))
        .min_by_key(|n| n.len())
        .with_context(|| format!("{} has no data.pkl: not a torch.save checkpoint", path.display()))?;
    let mut buf = Vec::new();
    zip.by_name(&name)?.read_to_end(&mut buf)?;
    unpickle(&buf).with_context(|| format!("cannot decode {name} in {}", path.display()))
}
