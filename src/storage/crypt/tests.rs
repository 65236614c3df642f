//! Unit tests of client-side encryption.

use super::*;
use crate::storage::FileStorage;

fn store(dir: &Path, key: [u8; 32]) -> CryptStorage {
    let inner = Arc::new(FileStorage::create(dir).unwrap());
    CryptStorage::new(inner, Keyring::new(Key::from_bytes(key), vec![]))
}

#[test]
fn sizes_round_trip() {
    for plain in [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 3 * CHUNK, 3 * CHUNK + 7] {
        let stored = HEADER_LEN + plain + chunk_count(plain) * TAG;
        assert_eq!(plain_size(stored), Some(plain), "{plain}");
    }
    assert_eq!(plain_size(HEADER_LEN + 15), None);
    assert_eq!(plain_size(HEADER_LEN + STRIDE + 16), None); // empty last chunk
}

#[test]
fn ranges_match_plaintext() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(dir.path(), [7; 32]);
    for size in [0usize, 5, CHUNK as usize, 2 * CHUNK as usize + 100] {
        let body: Vec<u8> = (0..size).map(|i| (i * 31 % 251) as u8).collect();
        s.put("db/0000/x.ltx", &body, &Metadata::new()).unwrap();
        assert_eq!(s.get("db/0000/x.ltx").unwrap(), body);
        assert_eq!(s.head("db/0000/x.ltx").unwrap().unwrap().size, size as u64);
        let c = CHUNK as usize;
        for (start, len) in [
            (0, Some(100)),
            (0, None),
            (c - 3, Some(10)),
            (c, Some(c)),
            (c + 1, None),
            (size, Some(5)),
            (size + 10, None),
            (1, Some(2 * c)),
            (3, Some(usize::MAX - 10)),
        ] {
            let want: Vec<u8> = body
                .iter()
                .skip(start)
                .take(len.unwrap_or(usize::MAX))
                .copied()
                .collect();
            let got = s
                .get_range("db/0000/x.ltx", start as u64, len.map(|l| l as u64))
                .unwrap();
            assert_eq!(got, want, "size {size} start {start} len {len:?}");
        }
    }
}

#[test]
fn key_ids_and_hex() {
    let k = Key::from_hex(&"ab".repeat(32), "t").unwrap();
    assert_eq!(k.bytes, [0xab; 32]);
    assert_eq!(k.id_hex().len(), 16);
    assert!(!format!("{k:?}").contains("abab"));
    assert!(Key::from_hex("abc", "t").is_err());
    let e = Key::from_hex(&"zz".repeat(32), "t")
        .unwrap_err()
        .to_string();
    assert!(!e.contains("zzzz"), "{e}");
}
