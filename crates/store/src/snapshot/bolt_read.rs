//! A read-only walker over a bbolt database file held in memory.
//!
//! Written here rather than taken from `bbolt-rs`: that crate refuses to open a file without a
//! persisted freelist, and etcd opens its backend with `NoFreelistSync`, so every etcd
//! database and snapshot lacks one. Reading needs only the meta pages and the B+tree pages,
//! so this walker is small; every offset is bounds-checked because the file comes from
//! outside the process.

/// bbolt's magic number, in the meta page.
const MAGIC: u32 = 0xED0C_DAED;
/// The only on-disk format version bbolt has.
const VERSION: u32 = 2;
/// Page header: id (8), flags (2), count (2), overflow (4).
const PAGE_HEADER: usize = 16;
/// A branch or leaf element is 16 bytes.
const ELEMENT: usize = 16;
const BRANCH_PAGE: u16 = 0x01;
const LEAF_PAGE: u16 = 0x02;
/// Leaf element flag: the value is a nested bucket's header.
const BUCKET_LEAF: u32 = 0x01;
/// A bucket header: root page id (8) and sequence (8); an inline bucket's page follows it.
const BUCKET_HEADER: usize = 16;
/// Deeper trees than this are not produced by bbolt for any size of file; deeper means a loop.
const MAX_DEPTH: usize = 64;

/// A key and its value, borrowed from the file.
pub type Entry<'a> = (&'a [u8], &'a [u8]);

/// An opened bbolt file: its page size and the root bucket of its newest valid meta page.
#[derive(Debug)]
pub struct BoltFile<'a> {
    data: &'a [u8],
    page_size: usize,
    root: u64,
    high_water: u64,
}

/// Whether `data` starts like a bbolt file (a meta page with bbolt's magic).
pub fn looks_like_bolt(data: &[u8]) -> bool {
    read_u32(data, PAGE_HEADER) == Some(MAGIC)
}

impl<'a> BoltFile<'a> {
    /// Reads the meta pages of `data`, choosing the valid one with the higher transaction id.
    pub fn open(data: &'a [u8]) -> Result<Self, String> {
        let first = Meta::parse(data, 0);
        let page_size = match &first {
            Ok(meta) => meta.page_size,
            // The first meta page may be torn; bbolt then assumes the OS page size.
            Err(_) => 4096,
        };
        let second = Meta::parse(data, page_size);
        let meta = match (first, second) {
            (Ok(a), Ok(b)) => {
                if b.txid > a.txid {
                    b
                } else {
                    a
                }
            }
            (Ok(a), Err(_)) => a,
            (Err(_), Ok(b)) => b,
            (Err(e), Err(_)) => return Err(e),
        };
        if (meta.high_water as u128) * (meta.page_size as u128) > data.len() as u128 {
            return Err(format!(
                "truncated: the database ends at page {} but the file holds {} bytes",
                meta.high_water,
                data.len()
            ));
        }
        Ok(Self {
            data,
            page_size: meta.page_size,
            root: meta.root,
            high_water: meta.high_water,
        })
    }

    /// Every key and value of the top-level bucket `name`, in key order (nested buckets are
    /// skipped); `None` if there is no such bucket.
    pub fn bucket(&self, name: &[u8]) -> Result<Option<Vec<Entry<'a>>>, String> {
        let mut top = Vec::new();
        self.walk(Node::Page(self.root), 0, &mut top, true)?;
        let Some((_, header)) = top.into_iter().find(|(k, _)| *k == name) else {
            return Ok(None);
        };
        let mut out = Vec::new();
        self.walk(self.bucket_root(header)?, 0, &mut out, false)?;
        Ok(Some(out))
    }

    /// Where a bucket's tree starts: a page, or its inline page right after the header.
    fn bucket_root(&self, header: &'a [u8]) -> Result<Node<'a>, String> {
        let root = read_u64(header, 0).ok_or("bucket header is too short")?;
        if root == 0 {
            let page = header
                .get(BUCKET_HEADER..)
                .ok_or("inline bucket is too short")?;
            Ok(Node::Inline(page))
        } else {
            Ok(Node::Page(root))
        }
    }

    fn page(&self, id: u64) -> Result<&'a [u8], String> {
        if id < 2 || id >= self.high_water {
            return Err(format!(
                "page {id} is outside the database (pages 2..{})",
                self.high_water
            ));
        }
        let start = id as usize * self.page_size;
        let overflow = read_u32(self.data, start + 12).ok_or("page header past the end")?;
        let len = (overflow as usize + 1)
            .checked_mul(self.page_size)
            .ok_or("page overflow count is too large")?;
        self.data
            .get(start..start.saturating_add(len))
            .ok_or_else(|| format!("page {id} runs past the end of the file"))
    }

    /// Appends the entries under `node` to `out`: only buckets when `buckets`, else only
    /// plain key/values.
    fn walk(
        &self,
        node: Node<'a>,
        depth: usize,
        out: &mut Vec<Entry<'a>>,
        buckets: bool,
    ) -> Result<(), String> {
        if depth > MAX_DEPTH {
            return Err("the page tree is deeper than bbolt ever makes it (a loop?)".into());
        }
        let page = match node {
            Node::Page(id) => self.page(id)?,
            Node::Inline(bytes) => bytes,
        };
        let flags = read_u16(page, 8).ok_or("page header is too short")?;
        let count = read_u16(page, 10).ok_or("page header is too short")? as usize;
        for i in 0..count {
            let at = PAGE_HEADER + i * ELEMENT;
            if flags & BRANCH_PAGE != 0 {
                let child = read_u64(page, at + 8).ok_or("branch element past the page")?;
                if matches!(node, Node::Inline(_)) {
                    return Err("an inline bucket has a branch page".into());
                }
                self.walk(Node::Page(child), depth + 1, out, buckets)?;
            } else if flags & LEAF_PAGE != 0 {
                let elem_flags = read_u32(page, at).ok_or("leaf element past the page")?;
                let pos = read_u32(page, at + 4).ok_or("leaf element past the page")? as usize;
                let ksize = read_u32(page, at + 8).ok_or("leaf element past the page")? as usize;
                let vsize = read_u32(page, at + 12).ok_or("leaf element past the page")? as usize;
                let key_at = at + pos;
                let key = slice(page, key_at, ksize).ok_or("leaf key past the page")?;
                let value = slice(page, key_at + ksize, vsize).ok_or("leaf value past the page")?;
                if (elem_flags & BUCKET_LEAF != 0) == buckets {
                    out.push((key, value));
                }
            } else {
                return Err(format!("unexpected page type {flags:#x} in a bucket tree"));
            }
        }
        Ok(())
    }
}

#[derive(Clone, Copy)]
enum Node<'a> {
    Page(u64),
    Inline(&'a [u8]),
}

struct Meta {
    page_size: usize,
    root: u64,
    high_water: u64,
    txid: u64,
}

impl Meta {
    fn parse(data: &[u8], page_at: usize) -> Result<Self, String> {
        let at = page_at + PAGE_HEADER;
        let field = |offset: usize| read_u64(data, at + offset).ok_or("meta page is truncated");
        if read_u32(data, at) != Some(MAGIC) {
            return Err("not a bbolt database (no bbolt magic in its meta page)".into());
        }
        if read_u32(data, at + 4) != Some(VERSION) {
            return Err("unsupported bbolt format version".into());
        }
        let page_size = read_u32(data, at + 8).ok_or("meta page is truncated")? as usize;
        // magic, version, page size, flags (16) + root bucket (16) + freelist, pgid, txid (24).
        let summed = slice(data, at, 56).ok_or("meta page is truncated")?;
        if fnv1a64(summed) != field(56)? {
            return Err("meta page checksum does not match".into());
        }
        if !(512..=1 << 20).contains(&page_size) || !page_size.is_power_of_two() {
            return Err(format!("implausible page size {page_size}"));
        }
        Ok(Self {
            page_size,
            root: field(16)?,
            high_water: field(40)?,
            txid: field(48)?,
        })
    }
}

/// The 64-bit FNV-1a hash bbolt checksums meta pages with.
fn fnv1a64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, &b| {
        (hash ^ b as u64).wrapping_mul(0x0100_0000_01b3)
    })
}

fn slice(data: &[u8], at: usize, len: usize) -> Option<&[u8]> {
    data.get(at..at.checked_add(len)?)
}

fn read_u16(data: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(slice(data, at, 2)?.try_into().ok()?))
}

fn read_u32(data: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(slice(data, at, 4)?.try_into().ok()?))
}

fn read_u64(data: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(slice(data, at, 8)?.try_into().ok()?))
}
