//! A data-only pickle reader, enough to read the plain values of a PyTorch checkpoint
//! (`epoch`, the `args` Namespace). It interprets opcodes into values and never imports or calls
//! anything: classes are recorded by name, tensors by their persistent id.
//!
//! The input is untrusted, so every resource it can make us spend is capped before it is
//! spent (see [`Limits`]): the size of `data.pkl` (compressed and inflated), the number of zip
//! entries, the nesting depth of values, the number of values created and the nodes and bytes
//! copied through the memo (`BINGET`, `DUP` and `BINPUT` copy their value). A pickle that
//! passes these caps is also small enough for burn-store's reader, which parses the same
//! `data.pkl` afterwards.

use std::collections::HashMap;
use std::io::Read;
use std::path::Path;

use anyhow::{Context, Result, anyhow, bail};

/// Resource caps of [`unpickle`] and [`read_torch_zip`].
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Largest `data.pkl`, compressed or inflated (bytes).
    pub max_pickle_bytes: u64,
    /// Most entries in the zip archive.
    pub max_zip_entries: usize,
    /// Deepest nesting of containers.
    pub max_depth: u32,
    /// Most values created by opcodes (each costs one node).
    pub max_nodes: u64,
    /// Most nodes copied by the memo and `DUP` (deep copies).
    pub max_copied_nodes: u64,
    /// Most string and bytes payload copied by the memo and `DUP`.
    pub max_copied_bytes: u64,
    /// Most memo entries.
    pub max_memo: usize,
}

impl Limits {
    /// The caps the importer uses. An official JiT-H checkpoint has a `data.pkl` of a few MB
    /// (a few hundred thousand values, about 1000 tensors per copy of the weights); these leave
    /// an order of magnitude of headroom while bounding what a hostile file costs to a few
    /// hundred MB and well under a second.
    pub const DEFAULT: Limits = Limits {
        max_pickle_bytes: 64 << 20,
        max_zip_entries: 1 << 18,
        max_depth: 1000,
        max_nodes: 4_000_000,
        max_copied_nodes: 1_000_000,
        max_copied_bytes: 64 << 20,
        max_memo: 1 << 20,
    };
}

impl Default for Limits {
    fn default() -> Self {
        Self::DEFAULT
    }
}

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
    Object {
        class: String,
        args: Box<Py>,
        state: Option<Box<Py>>,
    },
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
    /// The Python-ish type of the value, for error messages (never the value itself).
    fn type_name(&self) -> &'static str {
        match self {
            Py::None => "None",
            Py::Bool(_) => "bool",
            Py::Int(_) => "int",
            Py::Float(_) => "float",
            Py::Str(_) => "str",
            Py::Bytes(_) => "bytes",
            Py::List(_) => "list",
            Py::Dict(_) => "dict",
            Py::Global(_) => "global",
            Py::Object { .. } => "object",
            Py::Persistent(_) => "persistent id",
        }
    }
}

/// A value on the unpickler's stack, with what a copy of it costs.
#[derive(Clone)]
struct Val {
    py: Py,
    /// Nesting depth (0 for a scalar).
    depth: u32,
    /// Nodes in the tree (1 for a scalar).
    nodes: u64,
    /// String and bytes payload in the tree.
    bytes: u64,
}

impl Val {
    fn leaf(py: Py) -> Val {
        let bytes = match &py {
            Py::Str(s) | Py::Global(s) => s.len() as u64,
            Py::Bytes(b) => b.len() as u64,
            _ => 0,
        };
        Val { py, depth: 0, nodes: 1, bytes }
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
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }
    fn len_u32(&mut self) -> Result<usize> {
        Ok(u32::from_le_bytes(self.le()?) as usize)
    }
    fn len_u64(&mut self) -> Result<usize> {
        // A length beyond usize is certainly past the end of the pickle.
        Ok(usize::try_from(u64::from_le_bytes(self.le()?)).unwrap_or(usize::MAX))
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
    if !items.len().is_multiple_of(2) {
        bail!("odd number of dict items in pickle");
    }
    let mut it = items.into_iter();
    let mut out = Vec::with_capacity(it.len() / 2);
    while let (Some(k), Some(v)) = (it.next(), it.next()) {
        out.push((k, v));
    }
    Ok(out)
}

/// The unpickler's state: the stack, marks, memo and what has been spent so far.
struct Machine {
    lim: Limits,
    st: Vec<Val>,
    marks: Vec<usize>,
    memo: HashMap<u32, Val>,
    nodes: u64,
    copied_nodes: u64,
    copied_bytes: u64,
}

impl Machine {
    fn pop(&mut self) -> Result<Val> {
        self.st.pop().ok_or_else(|| anyhow!("pickle stack underflow"))
    }

    fn pop_mark(&mut self) -> Result<Vec<Val>> {
        let m = self.marks.pop().ok_or_else(|| anyhow!("pickle MARK missing"))?;
        if m > self.st.len() {
            bail!("bad pickle MARK");
        }
        Ok(self.st.split_off(m))
    }

    /// Counts one new value.
    fn spend(&mut self) -> Result<()> {
        self.nodes += 1;
        if self.nodes > self.lim.max_nodes {
            bail!("pickle has more than {} values: refused as a resource bomb", self.lim.max_nodes);
        }
        Ok(())
    }

    fn check_depth(&self, depth: u32) -> Result<()> {
        if depth > self.lim.max_depth {
            bail!("pickle nesting exceeds {} levels", self.lim.max_depth);
        }
        Ok(())
    }

    fn push(&mut self, v: Val) -> Result<()> {
        self.check_depth(v.depth)?;
        self.st.push(v);
        Ok(())
    }

    fn push_leaf(&mut self, py: Py) -> Result<()> {
        self.spend()?;
        self.push(Val::leaf(py))
    }

    /// A new container holding `items` (their own values were counted when they were made).
    fn container(&mut self, items: Vec<Val>, make: impl FnOnce(Vec<Py>) -> Result<Py>) -> Result<()> {
        self.spend()?;
        let depth = items.iter().map(|v| v.depth + 1).max().unwrap_or(0);
        let nodes = 1 + items.iter().map(|v| v.nodes).sum::<u64>();
        let bytes = items.iter().map(|v| v.bytes).sum();
        self.check_depth(depth)?;
        let py = make(items.into_iter().map(|v| v.py).collect())?;
        self.push(Val { py, depth, nodes, bytes })
    }

    /// Books a deep copy of `nodes` values and `bytes` payload, refusing it before it is made
    /// when the copy budget would be exceeded.
    fn charge_copy(&mut self, nodes: u64, bytes: u64) -> Result<()> {
        self.copied_nodes += nodes;
        self.copied_bytes += bytes;
        if self.copied_nodes > self.lim.max_copied_nodes || self.copied_bytes > self.lim.max_copied_bytes {
            bail!(
                "pickle memo copies exceed {} values or {} bytes: refused as a memo bomb",
                self.lim.max_copied_nodes,
                self.lim.max_copied_bytes
            );
        }
        Ok(())
    }

    /// A deep copy of the top of the stack.
    fn copy_top(&mut self) -> Result<Val> {
        let (nodes, bytes) = self.st.last().map(|v| (v.nodes, v.bytes)).ok_or_else(|| anyhow!("empty pickle stack"))?;
        self.charge_copy(nodes, bytes)?;
        Ok(self.st.last().cloned().expect("checked above"))
    }

    fn memo_put(&mut self, i: u32) -> Result<()> {
        if self.memo.len() >= self.lim.max_memo && !self.memo.contains_key(&i) {
            bail!("pickle memo exceeds {} entries", self.lim.max_memo);
        }
        let v = self.copy_top()?;
        self.memo.insert(i, v);
        Ok(())
    }

    fn memo_get(&mut self, i: u32) -> Result<()> {
        let (nodes, bytes) =
            self.memo.get(&i).map(|v| (v.nodes, v.bytes)).ok_or_else(|| anyhow!("pickle memo {i} missing"))?;
        self.charge_copy(nodes, bytes)?;
        let v = self.memo[&i].clone();
        self.push(v)
    }

    /// Appends `items` to the list on top of the stack.
    fn extend_list(&mut self, items: Vec<Val>, op: &str) -> Result<()> {
        let depth = items.iter().map(|v| v.depth + 1).max().unwrap_or(0);
        self.check_depth(depth)?;
        match self.st.last_mut() {
            Some(Val { py: Py::List(l), depth: d, nodes, bytes }) => {
                *d = (*d).max(depth);
                *nodes += items.iter().map(|v| v.nodes).sum::<u64>();
                *bytes += items.iter().map(|v| v.bytes).sum::<u64>();
                l.extend(items.into_iter().map(|v| v.py));
                Ok(())
            }
            Some(_) | None => bail!("pickle {op} on a non-list"),
        }
    }

    /// Adds the key/value pairs `items` to the dict on top of the stack.
    fn extend_dict(&mut self, items: Vec<Val>, op: &str) -> Result<()> {
        let depth = items.iter().map(|v| v.depth + 1).max().unwrap_or(0);
        self.check_depth(depth)?;
        if !matches!(self.st.last(), Some(Val { py: Py::Dict(_), .. })) {
            bail!("pickle {op} on a non-dict");
        }
        let added_nodes = items.iter().map(|v| v.nodes).sum::<u64>();
        let added_bytes = items.iter().map(|v| v.bytes).sum::<u64>();
        let kv = pairs(items.into_iter().map(|v| v.py).collect())?;
        if let Some(Val { py: Py::Dict(d), depth: dd, nodes, bytes }) = self.st.last_mut() {
            *dd = (*dd).max(depth);
            *nodes += added_nodes;
            *bytes += added_bytes;
            d.extend(kv);
        }
        Ok(())
    }
}

/// Decodes a pickle (protocols 2–5) into a [`Py`] tree, within `lim`.
pub fn unpickle_with(bytes: &[u8], lim: &Limits) -> Result<Py> {
    if bytes.len() as u64 > lim.max_pickle_bytes {
        bail!("pickle is {} bytes, above the {} byte limit", bytes.len(), lim.max_pickle_bytes);
    }
    let mut r = Reader { b: bytes, p: 0 };
    let mut m = Machine {
        lim: *lim,
        st: Vec::new(),
        marks: Vec::new(),
        memo: HashMap::new(),
        nodes: 0,
        copied_nodes: 0,
        copied_bytes: 0,
    };
    loop {
        let op = r.u8()?;
        match op {
            0x80 => {
                r.u8()?;
            }
            0x95 => {
                r.le::<8>()?;
            }
            b'.' => return Ok(m.pop()?.py),
            b'(' => {
                // A mark costs a stack slot like a value does.
                m.spend()?;
                m.marks.push(m.st.len())
            }
            b'N' => m.push_leaf(Py::None)?,
            0x88 => m.push_leaf(Py::Bool(true))?,
            0x89 => m.push_leaf(Py::Bool(false))?,
            b'J' => m.push_leaf(Py::Int(i32::from_le_bytes(r.le()?) as i64))?,
            b'K' => m.push_leaf(Py::Int(r.u8()? as i64))?,
            b'M' => m.push_leaf(Py::Int(u16::from_le_bytes(r.le()?) as i64))?,
            0x8a => {
                let n = r.u8()? as usize;
                m.push_leaf(long(r.take(n)?))?
            }
            0x8b => {
                let n = r.len_u32()?;
                m.push_leaf(long(r.take(n)?))?
            }
            b'G' => m.push_leaf(Py::Float(f64::from_be_bytes(r.le()?)))?,
            b'X' => {
                let n = r.len_u32()?;
                m.push_leaf(r.string(n)?)?
            }
            0x8c => {
                let n = r.u8()? as usize;
                m.push_leaf(r.string(n)?)?
            }
            0x8d => {
                let n = r.len_u64()?;
                m.push_leaf(r.string(n)?)?
            }
            b'B' => {
                let n = r.len_u32()?;
                m.push_leaf(Py::Bytes(r.take(n)?.to_vec()))?
            }
            b'C' => {
                let n = r.u8()? as usize;
                m.push_leaf(Py::Bytes(r.take(n)?.to_vec()))?
            }
            0x8e => {
                let n = r.len_u64()?;
                m.push_leaf(Py::Bytes(r.take(n)?.to_vec()))?
            }
            b'}' => m.push_leaf(Py::Dict(Vec::new()))?,
            b']' | 0x8f | b')' => m.push_leaf(Py::List(Vec::new()))?,
            b'd' => {
                let items = m.pop_mark()?;
                m.container(items, |items| Ok(Py::Dict(pairs(items)?)))?
            }
            b'l' | b't' | 0x91 => {
                let items = m.pop_mark()?;
                m.container(items, |items| Ok(Py::List(items)))?
            }
            0x85 => {
                let a = m.pop()?;
                m.container(vec![a], |items| Ok(Py::List(items)))?
            }
            0x86 => {
                let b = m.pop()?;
                let a = m.pop()?;
                m.container(vec![a, b], |items| Ok(Py::List(items)))?
            }
            0x87 => {
                let c = m.pop()?;
                let b = m.pop()?;
                let a = m.pop()?;
                m.container(vec![a, b, c], |items| Ok(Py::List(items)))?
            }
            b's' => {
                let v = m.pop()?;
                let k = m.pop()?;
                m.extend_dict(vec![k, v], "SETITEM")?
            }
            b'u' => {
                let items = m.pop_mark()?;
                m.extend_dict(items, "SETITEMS")?
            }
            b'a' => {
                let v = m.pop()?;
                m.extend_list(vec![v], "APPEND")?
            }
            b'e' | 0x90 => {
                let items = m.pop_mark()?;
                m.extend_list(items, "APPENDS")?
            }
            b'q' => {
                let i = r.u8()? as u32;
                m.memo_put(i)?
            }
            b'r' => {
                let i = u32::from_le_bytes(r.le()?);
                m.memo_put(i)?
            }
            0x94 => {
                let i = u32::try_from(m.memo.len()).map_err(|_| anyhow!("pickle memo overflow"))?;
                m.memo_put(i)?
            }
            b'h' => {
                let i = r.u8()? as u32;
                m.memo_get(i)?
            }
            b'j' => {
                let i = u32::from_le_bytes(r.le()?);
                m.memo_get(i)?
            }
            b'c' => {
                let (module, name) = (r.line()?, r.line()?);
                m.push_leaf(Py::Global(format!("{module}.{name}")))?
            }
            0x93 => {
                let n = m.pop()?;
                let md = m.pop()?;
                match (md.py, n.py) {
                    (Py::Str(md), Py::Str(n)) => m.push_leaf(Py::Global(format!("{md}.{n}")))?,
                    _ => bail!("bad pickle STACK_GLOBAL"),
                }
            }
            b'R' | 0x81 => {
                let args = m.pop()?;
                let class = m.pop()?;
                let class_bytes = class.bytes;
                let class = match class.py {
                    Py::Global(g) => g,
                    other => format!("<{}>", other.type_name()),
                };
                // An OrderedDict is filled by SETITEMS afterwards: treat it as a dict.
                if class == "collections.OrderedDict" {
                    m.push_leaf(Py::Dict(Vec::new()))?
                } else {
                    m.spend()?;
                    let v = Val {
                        depth: args.depth + 1,
                        nodes: 1 + args.nodes,
                        bytes: class_bytes + args.bytes,
                        py: Py::Object { class, args: Box::new(args.py), state: None },
                    };
                    m.push(v)?
                }
            }
            b'b' => {
                let state = m.pop()?;
                let obj = m.pop()?;
                let (depth, nodes, bytes) =
                    (obj.depth.max(state.depth + 1), obj.nodes + state.nodes, obj.bytes + state.bytes);
                let v = match (obj.py, state.py) {
                    (Py::Dict(mut d), Py::Dict(s)) => {
                        d.extend(s);
                        Val { py: Py::Dict(d), depth, nodes, bytes }
                    }
                    (Py::Object { class, args, .. }, s) => {
                        Val { py: Py::Object { class, args, state: Some(Box::new(s)) }, depth, nodes, bytes }
                    }
                    (o, _) => Val { py: o, depth: obj.depth, nodes: obj.nodes, bytes: obj.bytes },
                };
                m.push(v)?
            }
            b'Q' => {
                let pid = m.pop()?;
                m.container(vec![pid], |mut items| Ok(Py::Persistent(Box::new(items.pop().expect("one item")))))?
            }
            b'0' => {
                m.pop()?;
            }
            b'1' => {
                m.pop_mark()?;
            }
            b'2' => {
                let t = m.copy_top()?;
                m.push(t)?
            }
            op => bail!("unsupported pickle opcode 0x{op:02x} at byte {}", r.p - 1),
        }
    }
}

/// Reads and decodes `data.pkl` of a torch.save zip file, with the default [`Limits`].
pub fn read_torch_zip(path: &Path) -> Result<Py> {
    read_torch_zip_with(path, &Limits::DEFAULT)
}

/// Reads and decodes `data.pkl` of a torch.save zip file within `lim`: the entry is read
/// through a limit, so a deflate bomb costs at most `max_pickle_bytes`.
pub fn read_torch_zip_with(path: &Path, lim: &Limits) -> Result<Py> {
    let (name, buf) = read_data_pkl(path, lim)?;
    unpickle_with(&buf, lim).with_context(|| format!("cannot decode {name}"))
}

/// The name and bytes of the `data.pkl` entry, read within `lim`.
fn read_data_pkl(path: &Path, lim: &Limits) -> Result<(String, Vec<u8>)> {
    let (file, _) = crate::regular::open_regular(path)?;
    let mut zip = zip::ZipArchive::new(std::io::BufReader::new(file))
        .context("not a PyTorch zip checkpoint (truncated or another format)")?;
    if zip.len() > lim.max_zip_entries {
        bail!("the zip archive has {} entries, more than the {} accepted", zip.len(), lim.max_zip_entries);
    }
    // The entry burn-store's reader picks as well: the shortest `ROOT/data.pkl` whose ROOT is
    // empty or a folder.
    let names = zip.file_names().collect::<zip::result::ZipResult<Vec<_>>>().context("bad zip entry name")?;
    let name = names
        .iter()
        .filter(|n| n.strip_suffix("data.pkl").is_some_and(|root| root.is_empty() || root.ends_with('/')))
        .min_by_key(|n| n.len())
        .map(|n| n.to_string())
        .context("no data.pkl: not a torch.save checkpoint")?;
    let index = zip.index_for_name(&name).context("no data.pkl")?;
    let (size, compressed, crc) = {
        let raw = zip.by_index_raw(index).with_context(|| format!("cannot read zip entry {name}"))?;
        (raw.size(), raw.compressed_size(), raw.crc32())
    };
    if size > lim.max_pickle_bytes || compressed > lim.max_pickle_bytes {
        bail!("{name} is {} bytes ({} compressed), above the {} byte limit", size, compressed, lim.max_pickle_bytes);
    }
    // torch.save(..., compute_crc32=False) writes a CRC of 0, meaning "none" (as burn-store reads it).
    let options = zip::ZipReadOptions::new().ignore_crc32(crc == 0);
    let entry = zip.by_index_with_options(index, options).with_context(|| format!("cannot read zip entry {name}"))?;
    let mut buf = Vec::with_capacity(size as usize);
    entry.take(lim.max_pickle_bytes + 1).read_to_end(&mut buf).with_context(|| format!("cannot read {name}"))?;
    if buf.len() as u64 > lim.max_pickle_bytes {
        bail!(
            "{name} inflates beyond the {} byte limit (its header says {size}): refused as a deflate bomb",
            lim.max_pickle_bytes
        );
    }
    Ok((name, buf))
}
