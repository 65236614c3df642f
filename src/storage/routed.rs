//! Per-database key prefixes with one uploader pool.
//!
//! Why: a config file may store one database under another prefix of the
//! same bucket (`[[database]] prefix = "..."`). The pipeline addresses every
//! object as `<db name>/...` relative to *a* storage, and the uploader pool
//! is shared by all databases; rather than teach segments, the pool and
//! restore about several storages, [`RoutedStorage`] picks the storage by the
//! key's first segment (the database name) and forwards there. Databases
//! without a route use the default storage. Names are unique within one
//! daemon (checked at start-up), so the route is unambiguous.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use super::counting::database_of;
use super::{Metadata, ObjectInfo, Storage};
use crate::error::Result;

/// A storage that forwards each request to the storage of the key's database.
pub struct RoutedStorage {
    default: Arc<dyn Storage>,
    routes: RwLock<HashMap<String, Arc<dyn Storage>>>,
}

impl std::fmt::Debug for RoutedStorage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let routes = self.routes.read().unwrap_or_else(|p| p.into_inner());
        f.debug_struct("RoutedStorage")
            .field("default", &self.default.describe())
            .field("routes", &routes.len())
            .finish()
    }
}

impl RoutedStorage {
    /// Everything goes to `default` until [`RoutedStorage::route`] says otherwise.
    pub fn new(default: Arc<dyn Storage>) -> RoutedStorage {
        RoutedStorage {
            default,
            routes: RwLock::new(HashMap::new()),
        }
    }

    /// Send every key of database `db` to `storage` from now on.
    pub fn route(&self, db: &str, storage: Arc<dyn Storage>) {
        self.routes
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(db.to_string(), storage);
    }

    fn pick(&self, key: &str) -> Arc<dyn Storage> {
        let db = database_of(key);
        self.routes
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(db)
            .cloned()
            .unwrap_or_else(|| self.default.clone())
    }
}

impl Storage for RoutedStorage {
    fn put(&self, key: &str, body: &[u8], meta: &Metadata) -> Result<()> {
        self.pick(key).put(key, body, meta)
    }

    fn get_with_info(&self, key: &str) -> Result<(Vec<u8>, ObjectInfo)> {
        self.pick(key).get_with_info(key)
    }

    fn get(&self, key: &str) -> Result<Vec<u8>> {
        self.pick(key).get(key)
    }

    fn get_range(&self, key: &str, start: u64, len: Option<u64>) -> Result<Vec<u8>> {
        self.pick(key).get_range(key, start, len)
    }

    fn head(&self, key: &str) -> Result<Option<ObjectInfo>> {
        self.pick(key).head(key)
    }

    fn list(&self, prefix: &str, start_after: Option<&str>) -> Result<Vec<ObjectInfo>> {
        self.pick(prefix).list(prefix, start_after)
    }

    fn list_page(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        max_keys: usize,
    ) -> Result<Vec<ObjectInfo>> {
        self.pick(prefix).list_page(prefix, start_after, max_keys)
    }

    fn put_stream(&self, key: &str, body: &mut dyn super::Source, meta: &Metadata) -> Result<()> {
        self.pick(key).put_stream(key, body, meta)
    }

    fn put_conditional(
        &self,
        key: &str,
        body: &[u8],
        meta: &Metadata,
        cond: &super::Precondition,
    ) -> Result<bool> {
        self.pick(key).put_conditional(key, body, meta, cond)
    }

    fn get_with_etag(&self, key: &str) -> Result<Option<(Vec<u8>, String)>> {
        self.pick(key).get_with_etag(key)
    }

    fn delete_many(&self, keys: &[String]) -> Result<()> {
        let mut groups: HashMap<&str, Vec<String>> = HashMap::new();
        for k in keys {
            groups.entry(database_of(k)).or_default().push(k.clone());
        }
        for (db, keys) in groups {
            self.pick(&format!("{db}/")).delete_many(&keys)?;
        }
        Ok(())
    }

    fn check(&self) -> Result<()> {
        self.default.check()?;
        let routes: Vec<Arc<dyn Storage>> = self
            .routes
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect();
        for r in routes {
            r.check()?;
        }
        Ok(())
    }

    fn describe(&self) -> String {
        self.default.describe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::FileStorage;

    #[test]
    fn keys_go_to_their_database_route() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        let sa: Arc<dyn Storage> = Arc::new(FileStorage::create(a.path()).unwrap());
        let sb: Arc<dyn Storage> = Arc::new(FileStorage::create(b.path()).unwrap());
        let r = RoutedStorage::new(sa.clone());
        r.route("other.db", sb.clone());
        r.put("one.db/0000/x.ltx", b"1", &Metadata::new()).unwrap();
        r.put("other.db/0000/x.ltx", b"2", &Metadata::new())
            .unwrap();
        assert_eq!(sa.list("", None).unwrap().len(), 1);
        assert_eq!(sb.get("other.db/0000/x.ltx").unwrap(), b"2");
        assert_eq!(r.list("other.db/", None).unwrap().len(), 1);
        r.delete_many(&["one.db/0000/x.ltx".into(), "other.db/0000/x.ltx".into()])
            .unwrap();
        assert!(sa.list("", None).unwrap().is_empty());
        assert!(sb.list("", None).unwrap().is_empty());
    }
}
