//! The keys a resource renders from, read at one store revision: confd's memkv store.

use std::collections::BTreeMap;

use etcd_client::{Client, GetOptions};

use crate::gopath;

/// Keys and values (prefix already stripped), as templates see them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KvSnapshot {
    /// Key → value.
    pub pairs: BTreeMap<String, String>,
    /// The store revision the keys were read at.
    pub revision: i64,
}

impl KvSnapshot {
    /// Reads, all at one revision, each of `keys` below `prefix` with everything under it
    /// (by path: `/db` takes `/db` and `/db/...`, not `/database`), and strips `prefix` from
    /// the keys as confd's etcd v3 backend does.
    pub async fn read(
        client: &mut Client,
        prefix: &str,
        keys: &[String],
    ) -> Result<Self, etcd_client::Error> {
        // confd only makes the prefix absolute; it strips it as a plain string.
        let prefix = if prefix.starts_with('/') {
            prefix.to_string()
        } else {
            format!("/{prefix}")
        };
        let mut pairs = BTreeMap::new();
        let mut revision = 0;
        for key in keys {
            let full = gopath::join(&[&prefix, key]);
            let mut options = GetOptions::new().with_prefix();
            if revision > 0 {
                options = options.with_revision(revision);
            }
            let resp = client.get(full.as_str(), Some(options)).await?;
            if revision == 0 {
                revision = resp.header().map(|h| h.revision()).unwrap_or(0);
            }
            let below = if full.ends_with('/') {
                full.clone()
            } else {
                format!("{full}/")
            };
            for kv in resp.kvs() {
                let k = String::from_utf8_lossy(kv.key()).into_owned();
                if k != full && !k.starts_with(&below) {
                    continue;
                }
                let stripped = gopath::join(&["/", k.strip_prefix(prefix.as_str()).unwrap_or(&k)]);
                pairs.insert(stripped, String::from_utf8_lossy(kv.value()).into_owned());
            }
        }
        Ok(Self { pairs, revision })
    }
}
