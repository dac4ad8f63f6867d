//! The keys a resource renders from, read at one store revision: confd's memkv store.

use std::collections::BTreeMap;

use etcd_client::{Client, GetOptions};

/// Keys and values (prefix already stripped), as templates see them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KvSnapshot {
    /// Key → value.
    pub pairs: BTreeMap<String, String>,
    /// The store revision the keys were read at.
    pub revision: i64,
}

fn join(prefix: &str, key: &str) -> String {
    let joined = format!(
        "/{}/{}",
        prefix.trim_matches('/'),
        key.trim_start_matches('/')
    );
    let mut out = String::new();
    for part in joined.split('/').filter(|p| !p.is_empty()) {
        out.push('/');
        out.push_str(part);
    }
    if out.is_empty() {
        "/".into()
    } else {
        out
    }
}

impl KvSnapshot {
    /// Reads every key under `prefix + key` for each of `keys`, all at one revision, and
    /// strips `prefix` as confd does.
    pub async fn read(
        client: &mut Client,
        prefix: &str,
        keys: &[String],
    ) -> Result<Self, etcd_client::Error> {
        let mut pairs = BTreeMap::new();
        let mut revision = 0;
        for key in keys {
            let full = join(prefix, key);
            let mut options = GetOptions::new().with_prefix();
            if revision > 0 {
                options = options.with_revision(revision);
            }
            let resp = client.get(full.as_str(), Some(options)).await?;
            if revision == 0 {
                revision = resp.header().map(|h| h.revision()).unwrap_or(0);
            }
            let base = join(prefix, "");
            for kv in resp.kvs() {
                // Like confd, a prefix read takes every key that starts with it.
                let k = String::from_utf8_lossy(kv.key()).into_owned();
                let stripped = if base == "/" {
                    k.clone()
                } else {
                    join("/", k.strip_prefix(&base).unwrap_or(&k))
                };
                pairs.insert(stripped, String::from_utf8_lossy(kv.value()).into_owned());
            }
        }
        Ok(Self { pairs, revision })
    }
}

#[cfg(test)]
mod tests {
    use super::join;

    #[test]
    fn joins_like_go_path_join() {
        assert_eq!(join("/app", "/db/host"), "/app/db/host");
        assert_eq!(join("", "/db"), "/db");
        assert_eq!(join("/", "x/"), "/x");
        assert_eq!(join("/", ""), "/");
    }
}
