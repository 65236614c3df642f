//! The storage wrapper that ships an LTX object only under a held lease.
//!
//! Why a file of its own: every PUT of a database's objects goes through
//! it; it renews the lease when due and refuses once another writer holds it.

use super::*;

/// The database an object key belongs to, when it is an LTX object key.
fn db_of(key: &str) -> Option<(String, u8)> {
    ltx::parse_object_key("", key).map(|k| (k.db, k.level))
}

/// A [`Storage`] wrapper that checks the writer's lease before every PUT of
/// an LTX object and, in conditional mode, stores level-0 segments with
/// `If-None-Match: *`. Reads pass through.
pub struct FencedStorage {
    inner: Arc<dyn Storage>,
    fencer: Arc<Fencer>,
}

impl FencedStorage {
    /// Wraps `inner` (possibly encrypting) with `fencer`.
    pub fn new(inner: Arc<dyn Storage>, fencer: Arc<Fencer>) -> FencedStorage {
        FencedStorage { inner, fencer }
    }

    fn meta_with_writer(&self, meta: &Metadata) -> Metadata {
        let mut m = meta.clone();
        m.insert(META_WRITER, self.fencer.holder.clone());
        m
    }

    /// A conditional PUT refused: our own earlier attempt (a retry after a
    /// lost response) or another writer's object.
    fn refused(&self, db: &str, key: &str) -> Result<()> {
        let info = self.inner.head(key)?;
        let writer = info
            .as_ref()
            .and_then(|i| i.metadata.get(META_WRITER).map(str::to_string));
        if writer.as_deref() == Some(self.fencer.holder.as_str()) {
            return Ok(());
        }
        let why = format!(
            "{db}: fenced out: {}/{key} already exists, written by {}; another walsync is replicating {db}, this process stops replicating it",
            self.inner.describe(),
            writer.as_deref().unwrap_or("an unknown writer")
        );
        self.fencer.mark_fenced(db, &why);
        Err(Error::Fenced(why))
    }
}

impl Storage for FencedStorage {
    fn put(&self, key: &str, body: &[u8], meta: &Metadata) -> Result<()> {
        let Some((db, level)) = db_of(key) else {
            return self.inner.put(key, body, meta);
        };
        self.fencer.ensure(&db)?;
        let meta = self.meta_with_writer(meta);
        if level == 0 && self.fencer.mode() == Mode::Conditional && self.fencer.entry(&db).is_some()
        {
            if self
                .inner
                .put_conditional(key, body, &meta, &Precondition::Absent)?
            {
                return Ok(());
            }
            return self.refused(&db, key);
        }
        self.inner.put(key, body, &meta)
    }

    fn put_stream(
        &self,
        key: &str,
        body: &mut dyn crate::storage::Source,
        meta: &Metadata,
    ) -> Result<()> {
        match db_of(key) {
            Some((db, _)) => {
                self.fencer.ensure(&db)?;
                self.inner
                    .put_stream(key, body, &self.meta_with_writer(meta))
            }
            None => self.inner.put_stream(key, body, meta),
        }
    }

    fn put_conditional(
        &self,
        key: &str,
        body: &[u8],
        meta: &Metadata,
        cond: &Precondition,
    ) -> Result<bool> {
        if let Some((db, _)) = db_of(key) {
            self.fencer.ensure(&db)?;
        }
        self.inner.put_conditional(key, body, meta, cond)
    }

    fn get_with_etag(&self, key: &str) -> Result<Option<(Vec<u8>, String)>> {
        self.inner.get_with_etag(key)
    }

    fn get_with_info(&self, key: &str) -> Result<(Vec<u8>, ObjectInfo)> {
        self.inner.get_with_info(key)
    }

    fn get(&self, key: &str) -> Result<Vec<u8>> {
        self.inner.get(key)
    }

    fn get_range(&self, key: &str, start: u64, len: Option<u64>) -> Result<Vec<u8>> {
        self.inner.get_range(key, start, len)
    }

    fn head(&self, key: &str) -> Result<Option<ObjectInfo>> {
        self.inner.head(key)
    }

    fn list(&self, prefix: &str, start_after: Option<&str>) -> Result<Vec<ObjectInfo>> {
        self.inner.list(prefix, start_after)
    }

    fn list_page(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        max_keys: usize,
    ) -> Result<Vec<ObjectInfo>> {
        self.inner.list_page(prefix, start_after, max_keys)
    }

    fn delete_many(&self, keys: &[String]) -> Result<()> {
        self.inner.delete_many(keys)
    }

    fn check(&self) -> Result<()> {
        self.inner.check()
    }

    fn describe(&self) -> String {
        self.inner.describe()
    }
}
